"""The bridge between the denoiser's tokens and a sequence-classifier reward model R.

SPEC §2-§3. R (Skywork-Reward-V2-Qwen3 in the paper) scores a conversation read through
its own chat template. Guidance needs R's score as a differentiable function of the
response's input embeddings, in the *denoiser's* vocabulary:

    bridge[i]  = R's id of the token string of denoiser token i   (-1: no counterpart)
    E[i]       = E_R[bridge[i]]        (zeros where bridge[i] = -1)            (V, d)
    input      = [ E_R[prefix] | response embeddings | E_R[suffix] ]           prefix/suffix:
                 R's chat template around the assistant turn, user turn = the prompt
    keep_l     = no EOS at or before l, and not pad  (response positions)      attention
    pos        = cumsum(keep) - 1                                              position ids
    r          = score_head(last hidden state at the final suffix token)       (N,)

Excluded positions are dropped from attention and skipped by the position ids, and the
score is read at the last real token (always the final suffix token), so the score of
one-hot embeddings equals the discrete score of the same tokens: R reads exactly
[prefix | response up to its first EOS | suffix]. The prompt prefix is the same for
every trajectory and every guidance step, so its keys and values are computed once
(`cache=True`).

The discrete reward (the reported metric) scores real token ids with R's ordinary
forward: `score_ids`, and `score_texts` for (prompt, response text) pairs.

Shapes:
    B prompts   K trajectories per prompt   N = B * K rows   L response length
    P_R / S_R reward prefix / suffix length   V denoiser vocabulary   d reward embedding
"""

from __future__ import annotations

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


# --------------------------------------------------------------------------- differentiable score


class EmbeddingScorer:
    """Differentiable reward of response embeddings for B prompts x K trajectories.

    Call with embeds (N, L, d) in R's dtype and the denoiser tokens (N, L) (for the EOS
    cut-off and padding); returns (N,) float32 scores, differentiable in embeds. Rows
    are ordered prompt-major: row b * K + k is trajectory k of prompt b.
    """

    def __init__(self, model, tokenizer, prompts: list[str], *, K: int, eos_id: int | None,
                 pad_id: int | None, cache: bool = True):
        self.model, self.eos_id, self.pad_id, self.cache = model, eos_id, pad_id, cache
        device = next(model.parameters()).device
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
                for layer in out.past_key_values.layers]  # each (N, heads, P_R, head_dim)

    def response_keep(self, tokens: Tensor) -> Tensor:
        """Response positions R attends to: before the first EOS and not pad. (N, L) -> (N, L) bool."""
        keep = torch.ones_like(tokens, dtype=torch.bool)
        if self.eos_id is not None:
            keep &= (tokens == self.eos_id).cumsum(-1) == 0
        if self.pad_id is not None:
            keep &= tokens != self.pad_id
        return keep

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
                                      position_ids=position_ids[:, P_R:], past_key_values=past,
                                      use_cache=True).last_hidden_state  # (N, L + S_R, d)
        else:
            prefix = embed_tokens(self.prefix_ids)  # (N, P_R, d)
            hidden = self.model.model(inputs_embeds=torch.cat([prefix, embeds, suffix], 1),
                                      attention_mask=keep.long(), position_ids=position_ids,
                                      use_cache=False).last_hidden_state  # (N, P_R + L + S_R, d)
        return self.model.score(hidden[:, -1]).squeeze(-1).float()  # (N,)
