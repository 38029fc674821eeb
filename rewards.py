"""The bridge between the denoiser's tokens and a sequence-classifier reward model R.

R (Skywork-Reward-V2-Qwen3 in the paper, section 4) scores a conversation read through
its own chat template. Guidance needs R's score as a differentiable function of the
response's input embeddings, in the *denoiser's* vocabulary:

    bridge[i]  = R's id of the token string of denoiser token i   (-1: no counterpart)
    E[i]       = E_R[bridge[i]]        (zeros where bridge[i] = -1)            (V, d)
    input      = [ E_R[prefix] | response embeddings | E_R[suffix] ]           prefix/suffix:
                 R's chat template around the assistant turn, user turn = the prompt
    keep_l     = before the first end token, not hidden, not a leading newline  (`ResponseReading`)
    pos        = cumsum(keep) - 1                                              position ids
    r          = score_head(last hidden state at the final suffix token)       (N,)

Excluded positions are dropped from attention and skipped by the position ids, and the
score is read at the last real token (always the final suffix token), so the score of
one-hot embeddings equals the discrete score of the same tokens: R reads exactly
[prefix | kept response tokens | suffix]. (A sequence classifier called with
`inputs_embeds` cannot find padding from token ids and pools the last position; here the
last position is always real.) What is kept mirrors what the reported reward shows R:
the response is decoded up to its first end token as Dream decodes it (`decode_text`), and R's
template strips the leading newlines of the assistant turn; tokens without a counterpart
in R's vocabulary are left out too. What remains different between the token sequence
and its decoded text -- a `</think>` inside the response (Qwen3's template moves the
text before it into the think block) and non-canonical tokenisations (tokens sampled
independently need not be how R's tokenizer would split the text) -- is why `run.py`
reports both figures. The prompt prefix is the same for every trajectory and every
guidance step, so its keys and values are computed once (`cache=True`).

The discrete reward (the reported metric) scores real token ids with R's ordinary
forward: `score_ids`, and `score_texts` for (prompt, response text) pairs.

Shapes:
    B prompts   K trajectories per prompt   N = B * K rows   L response length
    P_R / S_R reward prefix / suffix length   V denoiser vocabulary   d reward embedding
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from einops import repeat
from torch import Tensor
from transformers import DynamicCache

_SENTINEL = "\x00RESPONSE\x00"  # stands in for the response when splitting the chat template


# --------------------------------------------------------------------------- vocabulary bridge


@dataclass(frozen=True)
class VocabBridge:
    """index (V,) long: R's token id for each denoiser id, -1 where none."""

    index: Tensor
    tokenizer_size: int  # tokens in the denoiser's tokenizer (V may add padding rows)
    unmapped: int  # denoiser tokenizer tokens with no counterpart in R's tokenizer

    @property
    def coverage(self) -> float:
        return 1.0 - self.unmapped / self.tokenizer_size


def vocab_bridge(dllm_tokenizer, reward_tokenizer, vocab_size: int) -> VocabBridge:
    """Map the denoiser's vocabulary (its embedding rows, vocab_size >= tokenizer size) to R's by token string."""
    reward_vocab = reward_tokenizer.get_vocab()  # token string -> id
    dllm_vocab = dllm_tokenizer.get_vocab()
    pairs = [(i, reward_vocab[token]) for token, i in dllm_vocab.items() if token in reward_vocab and i < vocab_size]
    index = torch.full((vocab_size,), -1, dtype=torch.long)
    if pairs:
        dllm_ids, reward_ids = torch.tensor(pairs, dtype=torch.long).unbind(-1)
        index[dllm_ids] = reward_ids
    return VocabBridge(index=index, tokenizer_size=len(dllm_vocab), unmapped=len(dllm_vocab) - len(pairs))


def bridged_embeddings(reward_embed: Tensor, bridge: VocabBridge) -> Tensor:
    """E = E_R[bridge], rows without a counterpart set to zero. (V_R, d) -> (V, d)."""
    index = bridge.index.to(reward_embed.device)  # (V,)
    rows = reward_embed[index.clamp(min=0)]  # (V, d)
    return torch.where((index >= 0).unsqueeze(-1), rows, torch.zeros((), dtype=rows.dtype, device=rows.device))


# --------------------------------------------------------------------------- chat template


def chat_text(tokenizer, prompt: str, response: str) -> str:
    """R's chat template with the user turn `prompt` and the assistant turn `response`."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def chat_pieces(tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """R's token ids before and after the assistant response: (prefix, suffix)."""
    pieces = chat_text(tokenizer, prompt, _SENTINEL).split(_SENTINEL)
    if len(pieces) != 2:
        raise ValueError(f"R's chat template shows the assistant response {len(pieces) - 1} times, not once")
    prefix, suffix = pieces
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(prefix), encode(suffix)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad id lists into ids (R, S) long and keep (R, S) bool."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    keep = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, keep


# --------------------------------------------------------------------------- decoding


def decode_text(tokenizer, ids: list[int]) -> str:
    """The text of denoiser token ids, as Dream's own `DreamTokenizer.decode(ids, skip_special_tokens=True)`.

    Dream's tokenizer (transformers 4.46's Python Qwen2 tokenizer) skips only the tokenizer's
    named special tokens, `all_special_ids` (bos, eos, pad, unk, mask and the
    `additional_special_tokens` of special_tokens_map.json: for Dream `<|beginoftext|>`,
    `<|endoftext|>` and `<|mask|>`), and keeps every other added token as its text
    (`<|im_start|>`, `<tool_call>`, ...). transformers 5's `skip_special_tokens=True` drops
    every added token flagged special instead (16 for Dream), so those named ids are dropped
    here and the rest decoded as they are.
    """
    dropped = set(tokenizer.all_special_ids)
    return tokenizer.decode([i for i in ids if i not in dropped], skip_special_tokens=False)


# --------------------------------------------------------------------------- discrete score


@torch.no_grad()
def score_ids(model, ids: Tensor, keep: Tensor) -> Tensor:
    """The discrete reward of left-padded token ids (N, S), keep (N, S) bool -> (N,) float32.

    R's ordinary forward; position ids count real tokens so padding changes nothing.
    """
    position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)  # (N, S)
    logits = model(input_ids=ids, attention_mask=keep.long(), position_ids=position_ids).logits  # (N, 1)
    return logits[:, 0].float()


def score_texts(model, tokenizer, prompts: list[str], responses: list[str]) -> Tensor:
    """The discrete reward of each (prompt, response text) pair through R's chat template. -> (N,)."""
    device = next(model.parameters()).device
    rows = [tokenizer(chat_text(tokenizer, p, r), add_special_tokens=False)["input_ids"]
            for p, r in zip(prompts, responses)]
    ids, keep = left_pad(rows, _pad_id(tokenizer))
    return score_ids(model, ids.to(device), keep.to(device))


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


# --------------------------------------------------------------------------- transformers' cache API


def cache_argument(model, cache) -> dict:
    """The keyword that hands `cache` to `model.forward`: `cache` (transformers >= 5.2x), else `past_key_values`.

    transformers renamed the argument and warns that the old name goes in 5.40; this asks the
    forward's own signature rather than the version number.
    """
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def output_cache(output):
    """The cache a forward returned, under its new name (`cache`) or its old one, without the deprecation warning."""
    return output["cache"] if "cache" in output.keys() else output["past_key_values"]


# --------------------------------------------------------------------------- differentiable score


@dataclass(frozen=True)
class ResponseReading:
    """Which denoiser tokens R reads, as (V,) bool tables indexed by token id.

    end:     ends the response: it and everything after it are left out (the EOS cut-off)
    hidden:  never shown to R: pads, special tokens that decoding drops, tokens with no
             counterpart in R's vocabulary (the decoded text that R scores has none of them)
    newline: newline-only tokens, left out while they lead the response (R's chat template
             strips the leading newlines of the assistant turn, as Qwen3's does)
    """

    end: Tensor
    hidden: Tensor
    newline: Tensor

    def keep(self, tokens: Tensor) -> Tensor:
        """Response positions R reads. (N, L) long -> (N, L) bool.

            keep_l = no end token at or before l  and  not hidden  and  some visible non-newline at or before l
        """
        end, hidden, newline = (table.to(tokens.device)[tokens] for table in (self.end, self.hidden, self.newline))
        visible = (end.cumsum(-1) == 0) & ~hidden  # (N, L) before the first end, shown
        started = (visible & ~newline).cumsum(-1) > 0  # (N, L) at or after the first shown non-newline
        return visible & started


def response_reading(vocab_size: int, end_ids, pad_id: int | None = None, tokenizer=None,
                     bridge: VocabBridge | None = None) -> ResponseReading:
    """The tables of `ResponseReading` for a vocabulary of `vocab_size` rows.

    With `tokenizer` (the denoiser's): its added tokens that decoding drops (`decode_text`)
    are hidden, and its tokens that decode to newlines only are `newline`. With
    `bridge`: tokens without a counterpart in R's vocabulary (and embedding rows beyond the
    tokenizer) are hidden.
    """
    end = torch.zeros(vocab_size, dtype=torch.bool)
    end[torch.tensor(sorted(set(end_ids)), dtype=torch.long)] = True
    hidden = torch.zeros(vocab_size, dtype=torch.bool)
    newline = torch.zeros(vocab_size, dtype=torch.bool)
    if pad_id is not None:
        hidden[pad_id] = True
    if bridge is not None:
        hidden |= bridge.index < 0
    if tokenizer is not None:
        dropped = [i for i in tokenizer.added_tokens_decoder
                   if i < vocab_size and decode_text(tokenizer, [i]) == ""]
        hidden[torch.tensor(dropped, dtype=torch.long)] = True
        # Byte-level BPE spells a newline byte "Ċ"; candidates are checked by decoding them.
        lines = [i for token, i in tokenizer.get_vocab().items()
                 if i < vocab_size and token and set(token) <= {"Ċ", "\n"}
                 and set(tokenizer.decode([i])) == {"\n"}]
        newline[torch.tensor(lines, dtype=torch.long)] = True
    return ResponseReading(end=end, hidden=hidden, newline=newline)


class EmbeddingScorer:
    """Differentiable reward of response embeddings for B prompts x K trajectories.

    Call with embeds (N, L, d) in R's dtype and the denoiser tokens (N, L) (for which
    positions R reads: `reading`); returns (N,) float32 scores, differentiable in embeds.
    Rows are ordered prompt-major: row b * K + k is trajectory k of prompt b.
    """

    def __init__(self, model, tokenizer, prompts: list[str], *, K: int, reading: ResponseReading,
                 cache: bool = True):
        self.model, self.cache = model, cache
        device = next(model.parameters()).device
        # The tables on R's device once: a host-to-device copy per call would wait for the GPU at every Adam step.
        self.reading = ResponseReading(*(table.to(device) for table in (reading.end, reading.hidden, reading.newline)))
        pieces = [chat_pieces(tokenizer, p) for p in prompts]
        suffixes = {tuple(s) for _, s in pieces}
        if len(suffixes) != 1:
            raise ValueError("the reward chat template gives different suffixes for different prompts")
        prefix_ids, prefix_keep = left_pad([p for p, _ in pieces], _pad_id(tokenizer))  # (B, P_R)
        self.prefix_ids = repeat(prefix_ids, "b p -> (b k) p", k=K).to(device)  # (N, P_R)
        self.prefix_keep = repeat(prefix_keep, "b p -> (b k) p", k=K).to(device)  # (N, P_R)
        self.suffix_ids = torch.tensor(suffixes.pop(), dtype=torch.long, device=device)  # (S_R,)
        self.prefix_kv = self._prefix_kv(prefix_ids.to(device), prefix_keep.to(device), K) if cache else None

    @torch.no_grad()
    def _prefix_kv(self, prefix_ids: Tensor, prefix_keep: Tensor, K: int) -> list[tuple[Tensor, Tensor]]:
        """Keys and values of the prompt prefix, once per prompt, repeated for the K trajectories."""
        position_ids = (prefix_keep.long().cumsum(-1) - 1).clamp(min=0)  # (B, P_R)
        out = self.model.model(input_ids=prefix_ids, attention_mask=prefix_keep.long(),
                               position_ids=position_ids, use_cache=True)
        return [(layer.keys.repeat_interleave(K, 0), layer.values.repeat_interleave(K, 0))
                for layer in output_cache(out).layers]  # each (N, heads, P_R, head_dim)

    def response_keep(self, tokens: Tensor) -> Tensor:
        """Response positions R attends to (`ResponseReading.keep`). (N, L) -> (N, L) bool."""
        return self.reading.keep(tokens)

    def __call__(self, embeds: Tensor, tokens: Tensor) -> Tensor:
        N = embeds.shape[0]
        embed_tokens = self.model.get_input_embeddings()
        suffix = repeat(embed_tokens(self.suffix_ids), "s d -> n s d", n=N)  # (N, S_R, d)
        keep = torch.cat([
            self.prefix_keep,
            self.response_keep(tokens),
            torch.ones(N, self.suffix_ids.shape[0], dtype=torch.bool, device=embeds.device),
        ], dim=1)  # (N, P_R + L + S_R)
        position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)  # (N, P_R + L + S_R)
        P_R = self.prefix_ids.shape[1]
        if self.prefix_kv is not None:
            past = DynamicCache(ddp_cache_data=self.prefix_kv)  # a fresh cache: the forward appends to it
            hidden = self.model.model(inputs_embeds=torch.cat([embeds, suffix], 1), attention_mask=keep.long(),
                                      position_ids=position_ids[:, P_R:], use_cache=True,
                                      **cache_argument(self.model.model, past)).last_hidden_state  # (N, L + S_R, d)
        else:
            prefix = embed_tokens(self.prefix_ids)  # (N, P_R, d)
            hidden = self.model.model(inputs_embeds=torch.cat([prefix, embeds, suffix], 1),
                                      attention_mask=keep.long(), position_ids=position_ids,
                                      use_cache=False).last_hidden_state  # (N, P_R + L + S_R, d)
        return self.model.score(hidden[:, -1]).squeeze(-1).float()  # (N,)
