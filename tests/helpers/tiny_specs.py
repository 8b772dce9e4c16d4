"""Per-architecture tensor lists and hyperparameter keys for tests/tiny_models.py, read off the vendored
llama.cpp's loaders (src/models/<arch>.cpp: load_arch_hparams / load_arch_tensors; key names in
src/llama-arch.cpp). Each spec maps Dims to ({key without the "<arch>." prefix: value}, [Tensor]).
Shapes are llama.cpp's `ne` (input dimension first): a projection from n_embd to n is (n_embd, n).
"""

from __future__ import annotations

from .tiny_models import Dims, Tensor

# --- shared pieces ------------------------------------------------------------------------------------


def base_keys(d: Dims, **extra) -> dict:
    keys = {
        "context_length": d.n_ctx,
        "embedding_length": d.n_embd,
        "block_count": d.n_layer,
        "feed_forward_length": d.n_ff,
        "attention.head_count": d.n_head,
        "attention.head_count_kv": d.n_head_kv,
        "attention.layer_norm_rms_epsilon": 1e-6,
        "attention.key_length": d.head_dim,
        "attention.value_length": d.head_dim,
        "rope.dimension_count": d.head_dim,
        "rope.freq_base": 10000.0,
    }
    keys.update(extra)
    return keys


def embeddings(d: Dims, tied: bool = True) -> list[Tensor]:
    out = [Tensor("token_embd.weight", (d.n_embd, d.n_vocab)), Tensor("output_norm.weight", (d.n_embd,), "ones")]
    if not tied:
        out.append(Tensor("output.weight", (d.n_embd, d.n_vocab)))
    return out


def attention(d: Dims, i: int, *, bias: bool = False, qk_norm: bool = False, norm: str | None = "attn_norm",
              post_norm: str | None = None) -> list[Tensor]:
    q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    p = f"blk.{i}."
    out = [Tensor(p + f"{norm}.weight", (d.n_embd,), "ones")] if norm else []
    out += [Tensor(p + "attn_q.weight", (d.n_embd, q)), Tensor(p + "attn_k.weight", (d.n_embd, kv)),
            Tensor(p + "attn_v.weight", (d.n_embd, kv)), Tensor(p + "attn_output.weight", (q, d.n_embd))]
    if bias:
        out += [Tensor(p + "attn_q.bias", (q,)), Tensor(p + "attn_k.bias", (kv,)), Tensor(p + "attn_v.bias", (kv,))]
    if qk_norm:
        out += [Tensor(p + "attn_q_norm.weight", (d.head_dim,), "ones"),
                Tensor(p + "attn_k_norm.weight", (d.head_dim,), "ones")]
    if post_norm:
        out.append(Tensor(p + f"{post_norm}.weight", (d.n_embd,), "ones"))
    return out


def ffn(d: Dims, i: int, *, norm: str | None = "ffn_norm", post_norm: str | None = None, gate: bool = True,
        n_ff: int | None = None) -> list[Tensor]:
    p, f = f"blk.{i}.", n_ff or d.n_ff
    out = [Tensor(p + f"{norm}.weight", (d.n_embd,), "ones")] if norm else []
    if gate:
        out.append(Tensor(p + "ffn_gate.weight", (d.n_embd, f)))
    out += [Tensor(p + "ffn_up.weight", (d.n_embd, f)), Tensor(p + "ffn_down.weight", (f, d.n_embd))]
    if post_norm:
        out.append(Tensor(p + f"{post_norm}.weight", (d.n_embd,), "ones"))
    return out


def experts(d: Dims, i: int, *, norm: str | None = "ffn_norm") -> list[Tensor]:
    p, e, f = f"blk.{i}.", d.n_expert, d.n_ff_exp
    out = [Tensor(p + f"{norm}.weight", (d.n_embd,), "ones")] if norm else []
    return out + [Tensor(p + "ffn_gate_inp.weight", (d.n_embd, e), f32=True),
                  Tensor(p + "ffn_gate_exps.weight", (d.n_embd, f, e)),
                  Tensor(p + "ffn_up_exps.weight", (d.n_embd, f, e)),
                  Tensor(p + "ffn_down_exps.weight", (f, d.n_embd, e))]


def per_layer(d: Dims, *parts) -> list[Tensor]:
    return [t for i in range(d.n_layer) for part in parts for t in part(d, i)]


# --- architectures ---------------------------------------------------------------------------------------


def llama(d: Dims):
    return base_keys(d, vocab_size=d.n_vocab), embeddings(d) + per_layer(d, attention, ffn)


def qwen2(d: Dims):
    return base_keys(d), embeddings(d) + per_layer(d, lambda d, i: attention(d, i, bias=True), ffn)


def qwen3(d: Dims):
    return base_keys(d), embeddings(d) + per_layer(d, lambda d, i: attention(d, i, qk_norm=True), ffn)


SWA_WINDOW = 128  # small, so that a 700-token prompt slides past it


def gemma2(d: Dims):
    # default pattern 2: even layers SWA (window 128), odd layers full; attention and final logit soft-capping.
    keys = base_keys(d, **{"attention.sliding_window": SWA_WINDOW, "attn_logit_softcapping": 50.0,
                           "final_logit_softcapping": 30.0})
    return keys, embeddings(d) + per_layer(
        d, lambda d, i: attention(d, i, post_norm="post_attention_norm"),
        lambda d, i: ffn(d, i, post_norm="post_ffw_norm"))


def _gemma4_swa(d: Dims) -> list[bool]:
    # alternate from the end, last layer full: layer L-4 is SWA and L-3 full, the two layers the last two reuse
    return [(d.n_layer - 1 - i) % 2 == 1 for i in range(d.n_layer)]


def gemma4(d: Dims):
    # SWA = layers L-4 and L-2 (and every other one below), full = L-3 and L-1; the last 2 layers (L-2 SWA, L-1 full)
    # have no K/V of their own (shared_kv_layers = d.n_kv_shared, 2 by default) and reuse layers L-4 (SWA) and
    # L-3 (full); no PLE, no MoE.
    n_shared = d.n_kv_shared
    assert d.n_layer >= n_shared + 2, "gemma4 KV sharing needs an SWA and a full layer before the shared ones"
    swa = _gemma4_swa(d)
    keys = base_keys(d, **{
        "rope.freq_base": 1000000.0, "rope.freq_base_swa": 10000.0, "rope.dimension_count_swa": d.head_dim,
        "attention.sliding_window": SWA_WINDOW, "attention.sliding_window_pattern": swa,
        "attention.shared_kv_layers": n_shared, "embedding_length_per_layer_input": 0,
        "attention.key_length_swa": d.head_dim, "attention.value_length_swa": d.head_dim,
        "final_logit_softcapping": 30.0})
    q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    tensors = embeddings(d) + [Tensor("rope_freqs.weight", (d.head_dim // 2,), "ones")]  # full layers' freq factors
    for i in range(d.n_layer):
        p, has_kv = f"blk.{i}.", i < d.n_layer - n_shared
        tensors += [Tensor(p + "attn_norm.weight", (d.n_embd,), "ones"),
                    Tensor(p + "attn_q.weight", (d.n_embd, q)),
                    Tensor(p + "attn_q_norm.weight", (d.head_dim,), "ones")]
        if has_kv:
            tensors += [Tensor(p + "attn_k.weight", (d.n_embd, kv)), Tensor(p + "attn_v.weight", (d.n_embd, kv)),
                        Tensor(p + "attn_k_norm.weight", (d.head_dim,), "ones")]
        tensors += [Tensor(p + "attn_output.weight", (q, d.n_embd)),
                    Tensor(p + "post_attention_norm.weight", (d.n_embd,), "ones")]
        tensors += ffn(d, i, post_norm="post_ffw_norm")
    return keys, tensors


def phi3(d: Dims):
    # fused blk.N.attn_qkv (q | k | v rows) and fused ffn_up (gate | up, 2*n_ff wide, SwiGLU), no ffn_gate; tied output.
    # general.name overridden: a name containing "phi3"/"phi-3" makes llama-vocab look up "</s>", "<unk>", "<s>"
    # (Phi-3's special tokens), which SmolLM2's vocab lacks -> "unordered_map::at" at load.
    assert d.n_head * d.head_dim == d.n_embd, "phi3 shapes attention as n_embd wide"
    kv = d.n_head_kv * d.head_dim
    tensors = embeddings(d)
    for i in range(d.n_layer):
        p = f"blk.{i}."
        tensors += [Tensor(p + "attn_norm.weight", (d.n_embd,), "ones"),
                    Tensor(p + "attn_qkv.weight", (d.n_embd, d.n_embd + 2 * kv)),
                    Tensor(p + "attn_output.weight", (d.n_embd, d.n_embd)),
                    Tensor(p + "ffn_norm.weight", (d.n_embd,), "ones"),
                    Tensor(p + "ffn_up.weight", (d.n_embd, 2 * d.n_ff)),
                    Tensor(p + "ffn_down.weight", (d.n_ff, d.n_embd))]
    return base_keys(d, **{"general.name": "tiny random Phi 3 (pop-local tests)"}), tensors


def mistral3(d: Dims):
    # Ministral-3 style: llama layers + YaRN rope (orig ctx n_ctx/16) and llama-4 attention temperature scaling,
    # which kicks in past the original context (256 tokens at the default n_ctx 4096).
    orig = max(d.n_ctx // 16, 1)
    keys = base_keys(d, **{
        "rope.freq_base": 1000000.0, "rope.scaling.type": "yarn", "rope.scaling.factor": float(d.n_ctx // orig),
        "rope.scaling.original_context_length": orig, "rope.scaling.yarn_beta_fast": 32.0,
        "rope.scaling.yarn_beta_slow": 1.0, "rope.scaling.yarn_log_multiplier": 1.0,
        "attention.temperature_scale": 0.1})
    return keys, embeddings(d) + per_layer(d, attention, ffn)

def _moe_keys(d: Dims) -> dict:
    return {"expert_count": d.n_expert, "expert_used_count": d.n_expert_used,
            "expert_feed_forward_length": d.n_ff_exp}


def _shared_expert(d: Dims, i: int, n_ff: int) -> list[Tensor]:
    p = f"blk.{i}."
    return [Tensor(p + "ffn_gate_shexp.weight", (d.n_embd, n_ff)), Tensor(p + "ffn_up_shexp.weight", (d.n_embd, n_ff)),
            Tensor(p + "ffn_down_shexp.weight", (n_ff, d.n_embd))]


# qwen3moe: every layer MoE (softmax gating, no shared expert), q/k norms required.
def qwen3moe(d: Dims):
    return (base_keys(d, **_moe_keys(d)),
            embeddings(d) + per_layer(d, lambda d, i: attention(d, i, qk_norm=True), experts))


def _gpt_oss_layer(d: Dims, i: int) -> list[Tensor]:
    p, e, f = f"blk.{i}.", d.n_expert, d.n_ff_exp
    out = attention(d, i, bias=True, post_norm="post_attention_norm")
    out += [Tensor(p + "attn_output.bias", (d.n_embd,)),
            Tensor(p + "attn_sinks.weight", (d.n_head,), scale=1.0)]
    out += experts(d, i, norm=None)
    out += [Tensor(p + "ffn_gate_inp.bias", (e,)), Tensor(p + "ffn_gate_exps.bias", (f, e)),
            Tensor(p + "ffn_up_exps.bias", (f, e)), Tensor(p + "ffn_down_exps.bias", (d.n_embd, e))]
    return out


# gpt-oss (LLM_ARCH_OPENAI_MOE): attn sinks, q/k/v/o + router + expert biases, untied output required,
# post_attention_norm is the pre-FFN norm; sliding window 128 on even layers (default pattern 2), full on odd.
def gpt_oss(d: Dims):
    keys = base_keys(d, **_moe_keys(d), **{"attention.sliding_window": 128})
    return keys, embeddings(d, tied=False) + per_layer(d, _gpt_oss_layer)


def _glm4moe_layer(d: Dims, i: int) -> list[Tensor]:
    p = f"blk.{i}."
    out = attention(d, i, bias=True, post_norm="post_attention_norm")
    if i < 1:  # leading_dense_block_count
        return out + ffn(d, i, norm=None)
    return out + experts(d, i, norm=None) + [Tensor(p + "exp_probs_b.bias", (d.n_expert,), "zeros")] \
        + _shared_expert(d, i, d.n_ff_exp)


# glm4moe (LLM_ARCH_GLM4_MOE): layer 0 dense, rest MoE with sigmoid gating + exp_probs_b + 1 shared expert;
# q/k/v biases, partial rotary (rope dim = head_dim/2); nextn_predict_layers omitted (0), so no MTP layer.
def glm4moe(d: Dims):
    keys = base_keys(d, **_moe_keys(d), **{
        "rope.dimension_count": d.head_dim // 2,
        "leading_dense_block_count": 1,
        "expert_shared_count": 1,
        "expert_weights_scale": 1.0,
        "expert_weights_norm": True,
        "expert_gating_func": 2,  # LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID
    })
    return keys, embeddings(d) + per_layer(d, _glm4moe_layer)


def _llama4_layer(d: Dims, i: int) -> list[Tensor]:
    out = attention(d, i)
    if (i + 1) % 2 == 0:  # interleave_moe_layer_step = 2: odd layers MoE (+ one shared expert of n_ff_exp)
        return out + experts(d, i) + _shared_expert(d, i, d.n_ff_exp)
    return out + ffn(d, i)


# llama4: interleave_moe_layer_step 2 (layers 1, 3, ... MoE, sigmoid gating, shared expert); no sliding_window key,
# so the loader uses chunked attention (chunk 8192) on 3 of 4 layers and skips rope on every 4th (full) layer.
def llama4(d: Dims):
    keys = base_keys(d, **_moe_keys(d), **{"interleave_moe_layer_step": 2, "rope.freq_base": 500000.0})
    return keys, embeddings(d) + per_layer(d, _llama4_layer)

# No key for the NoPE pattern: n_no_rope_layer_step is hardcoded to 4, so with 4 layers blk.3 skips RoPE.
def smollm3(d: Dims):
    return base_keys(d), embeddings(d) + per_layer(d, attention, ffn)


# No pre-norms: post_attention_norm / post_ffw_norm after each block; q_norm spans all of n_embd, k_norm all of
# n_head_kv*head_dim (not per head); output.weight required; head dim is n_embd/n_head
# (needs n_head*head_dim == n_embd).
def olmo2(d: Dims):
    def layer(d: Dims, i: int):
        p, kv = f"blk.{i}.", d.n_head_kv * d.head_dim
        return (attention(d, i, norm=None, post_norm="post_attention_norm")
                + [Tensor(p + "attn_q_norm.weight", (d.n_head * d.head_dim,), "ones"),
                   Tensor(p + "attn_k_norm.weight", (kv,), "ones")]
                + ffn(d, i, norm=None, post_norm="post_ffw_norm"))
    return base_keys(d), embeddings(d, tied=False) + per_layer(d, layer)


# logit_scale is required (logits divided by it); embedding/residual/attention scales are optional, set to
# Granite-3-like values so every scale path runs (attention.scale replaces 1/sqrt(head_dim)).
def granite(d: Dims):
    keys = base_keys(d, **{"logit_scale": 8.0, "embedding_scale": 12.0, "residual_scale": 0.22,
                           "attention.scale": 1.0 / d.head_dim})
    return keys, embeddings(d) + per_layer(d, attention, ffn)


# Pre- and post-norms around attention and FFN; fused gate+up: ffn_up is (n_embd, 2*n_ff), no ffn_gate (SWIGLU
# SEQ); q/k/v biases as in GLM-4-0414; partial RoPE (dimension_count = head_dim/2), no sections -> plain NORM rope.
def glm4(d: Dims):
    def layer(d: Dims, i: int):
        p = f"blk.{i}."
        return (attention(d, i, bias=True, post_norm="post_attention_norm")
                + [Tensor(p + "ffn_norm.weight", (d.n_embd,), "ones"),
                   Tensor(p + "ffn_up.weight", (d.n_embd, 2 * d.n_ff)),
                   Tensor(p + "ffn_down.weight", (d.n_ff, d.n_embd)),
                   Tensor(p + "post_ffw_norm.weight", (d.n_embd,), "ones")])
    return base_keys(d, **{"rope.dimension_count": d.head_dim // 2}), embeddings(d) + per_layer(d, layer)


def _sections(d: Dims, ratio: tuple) -> list:
    """M-RoPE sections (t, h, w, extra) in rotary pairs, summing to head_dim/2, scaled from the real model's."""
    half = d.head_dim // 2
    s = [half * r // sum(ratio) for r in ratio]
    s[0] += half - sum(s)
    return s + [0]


def _imrope_sections(d: Dims) -> list:
    """Interleaved sections: pair j goes to axis j % 3 while j < 3*sections[axis], so count each residue to
    cover every pair with t/h/w (an uncovered pair falls to the 4th axis, position 0 for text: unrotated)."""
    half = d.head_dim // 2
    return [len(range(r, half, 3)) for r in range(3)] + [0]


# M-RoPE (rope type MROPE): rope.dimension_sections is a required 4-long int32 array, [2, 3, 3, 0] for head_dim 16
# (Qwen2-VL's 16:24:24); q/k/v biases like qwen2; q projection is n_embd -> n_embd (needs n_head*head_dim == n_embd).
def qwen2vl(d: Dims):
    keys = base_keys(d, **{"rope.dimension_sections": _sections(d, (16, 24, 24))})
    return keys, embeddings(d) + per_layer(d, lambda d, i: attention(d, i, bias=True), ffn)


# Interleaved M-RoPE (IMROPE): sections [3, 3, 2, 0] for head_dim 16 (every pair covered); per-head q/k norms;
# n_deepstack_layers = 0 (the default) so the input embedding stays n_embd wide and text-only decode works.
def qwen3vl(d: Dims):
    keys = base_keys(d, **{"rope.dimension_sections": _imrope_sections(d), "n_deepstack_layers": 0})
    return keys, embeddings(d) + per_layer(d, lambda d, i: attention(d, i, qk_norm=True), ffn)

# --- Qwen3.5 hybrids ----------------------------------------------------------------------------------

_FULL_ATTN_INTERVAL = 4  # layer i is full attention iff (i + 1) % 4 == 0: with 4 layers, 0-2 recurrent, 3 attention


def _qwen35_keys(d: Dims, **extra) -> dict:
    n_rot = d.head_dim // 2  # partial rotary, like the real models (64 of 256)
    return base_keys(d, **{
        "rope.dimension_count": n_rot,
        # IMROPE sections sum to n_rot / 2 (real: [11, 11, 10, 0] for 64)
        "rope.dimension_sections": [n_rot // 4, n_rot // 8, n_rot // 2 - n_rot // 4 - n_rot // 8, 0],
        "full_attention_interval": _FULL_ATTN_INTERVAL,
        "ssm.conv_kernel": 4,
        "ssm.state_size": d.head_dim,        # head_k_dim == head_v_dim
        "ssm.group_count": d.n_head_kv,      # linear-attention K heads
        "ssm.time_step_rank": d.n_head,      # linear-attention V heads (multiple of the K heads)
        "ssm.inner_size": d.head_dim * d.n_head,  # must be state_size * time_step_rank
        **extra,
    })


def _qwen35_mixer(d: Dims, i: int) -> list[Tensor]:
    """attn_norm + post_attention_norm, then a gated full-attention block or a gated delta-net block."""
    p = f"blk.{i}."
    out = [Tensor(p + "attn_norm.weight", (d.n_embd,), "ones"),
           Tensor(p + "post_attention_norm.weight", (d.n_embd,), "ones")]
    if (i + 1) % _FULL_ATTN_INTERVAL == 0:
        q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
        # attn_q: the query and its sigmoid gate, interleaved per head
        return out + [Tensor(p + "attn_q.weight", (d.n_embd, 2 * q)),
                      Tensor(p + "attn_k.weight", (d.n_embd, kv)),
                      Tensor(p + "attn_v.weight", (d.n_embd, kv)),
                      Tensor(p + "attn_output.weight", (q, d.n_embd)),
                      Tensor(p + "attn_q_norm.weight", (d.head_dim,), "ones"),
                      Tensor(p + "attn_k_norm.weight", (d.head_dim,), "ones")]
    hk, hv, s, conv = d.n_head_kv, d.n_head, d.head_dim, 4
    key_dim, value_dim = hk * s, hv * s
    return out + [Tensor(p + "attn_qkv.weight", (d.n_embd, 2 * key_dim + value_dim)),
                  Tensor(p + "attn_gate.weight", (d.n_embd, value_dim)),
                  # ssm_conv: F32 only
                  Tensor(p + "ssm_conv1d.weight", (conv, 2 * key_dim + value_dim), scale=0.5, f32=True),
                  Tensor(p + "ssm_dt.bias", (hv,), "zeros"),
                  Tensor(p + "ssm_a", (hv,), "uniform_neg"),  # -exp(A_log): negative decay
                  Tensor(p + "ssm_beta.weight", (d.n_embd, hv)),
                  Tensor(p + "ssm_alpha.weight", (d.n_embd, hv)),
                  Tensor(p + "ssm_norm.weight", (s,), "ones"),
                  Tensor(p + "ssm_out.weight", (value_dim, d.n_embd))]


# Qwen3.5 dense: layers with (i+1) % 4 == 0 full attention (gated Q, q/k norm, IMROPE), the rest gated delta-net;
# FFN has no ffn_norm (post_attention_norm feeds it).
def qwen35(d: Dims):
    return _qwen35_keys(d), embeddings(d) + per_layer(d, _qwen35_mixer, lambda d, i: ffn(d, i, norm=None))


def _qwen35_moe_ffn(d: Dims, i: int) -> list[Tensor]:
    p = f"blk.{i}."
    return experts(d, i, norm=None) + [
        Tensor(p + "ffn_gate_inp_shexp.weight", (d.n_embd,), f32=True),  # 1-D sigmoid gate of the shared expert
        Tensor(p + "ffn_gate_shexp.weight", (d.n_embd, d.n_ff_exp)),
        Tensor(p + "ffn_up_shexp.weight", (d.n_embd, d.n_ff_exp)),
        Tensor(p + "ffn_down_shexp.weight", (d.n_ff_exp, d.n_embd))]


# Qwen3.5 MoE: same layer pattern as qwen35; every layer's FFN is softmax-routed experts plus a sigmoid-gated
# shared expert.
def qwen35moe(d: Dims):
    keys = _qwen35_keys(d, expert_count=d.n_expert, expert_used_count=d.n_expert_used,
                        expert_feed_forward_length=d.n_ff_exp,
                        expert_shared_feed_forward_length=d.n_ff_exp)
    return keys, embeddings(d) + per_layer(d, _qwen35_mixer, _qwen35_moe_ffn)


# --- DeepSeek-V2/V3 (MLA) -----------------------------------------------------------------------------------


def _deepseek2_dims(d: Dims):
    rope = d.head_dim        # qk_rope_head_dim
    nope = d.head_dim        # qk_nope_head_dim
    v = d.head_dim           # v_head_dim
    kv_lora = 2 * d.head_dim  # the cached latent (kv_lora + rope) and kv_lora itself: multiples of 32 for q8_0
    q_lora = 2 * d.head_dim
    return rope, nope, v, kv_lora, q_lora


def _deepseek2_layer(d: Dims, i: int) -> list[Tensor]:
    rope, nope, v, kv_lora, q_lora = _deepseek2_dims(d)
    p, h = f"blk.{i}.", d.n_head
    out = [Tensor(p + "attn_norm.weight", (d.n_embd,), "ones"),
           Tensor(p + "attn_q_a_norm.weight", (q_lora,), "ones"),
           Tensor(p + "attn_kv_a_norm.weight", (kv_lora,), "ones"),
           Tensor(p + "attn_q_a.weight", (d.n_embd, q_lora)),
           Tensor(p + "attn_q_b.weight", (q_lora, h * (nope + rope))),
           Tensor(p + "attn_kv_a_mqa.weight", (d.n_embd, kv_lora + rope)),
           Tensor(p + "attn_k_b.weight", (nope, kv_lora, h)),  # split kv_b: required on the MLA path
           Tensor(p + "attn_v_b.weight", (kv_lora, v, h)),
           Tensor(p + "attn_output.weight", (h * v, d.n_embd))]
    if i < 1:  # leading_dense_block_count
        return out + ffn(d, i)
    f = d.n_ff_exp  # one shared expert of the routed experts' width
    return out + experts(d, i) + [Tensor(p + "ffn_gate_shexp.weight", (d.n_embd, f)),
                                  Tensor(p + "ffn_up_shexp.weight", (d.n_embd, f)),
                                  Tensor(p + "ffn_down_shexp.weight", (f, d.n_embd))]


# DeepSeek2 with MLA (key/value_length_mla set => is_mla(): absorbed q·k_b, K-only cache of kv_lora+rope per token,
# V = its first kv_lora columns, output through v_b); q_lora path (attn_q_a/q_b); layer 0 dense FFN, layers 1+
# softmax-routed experts plus one shared expert.
def deepseek2(d: Dims):
    rope, nope, v, kv_lora, q_lora = _deepseek2_dims(d)
    keys = base_keys(d, **{
        "attention.head_count_kv": 1,                   # MQA over the compressed latent
        "attention.key_length": kv_lora + rope,         # cache row: latent + roped key
        "attention.value_length": kv_lora,
        "attention.key_length_mla": nope + rope,
        "attention.value_length_mla": v,
        "attention.q_lora_rank": q_lora,                # required (any non-"lite" layer count); 0 would load attn_q
        "attention.kv_lora_rank": kv_lora,
        "rope.dimension_count": rope,
        "leading_dense_block_count": 1,
        "expert_count": d.n_expert,
        "expert_used_count": d.n_expert_used,
        "expert_feed_forward_length": d.n_ff_exp,
        "expert_shared_count": 1,
        "expert_weights_scale": 1.0,
        "expert_weights_norm": True,
        "expert_gating_func": 1,                        # softmax
    })
    return keys, embeddings(d) + per_layer(d, _deepseek2_layer)


SPECS = {
    "llama": llama,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma2": gemma2,
    "gemma4": gemma4,
    "phi3": phi3,
    "mistral3": mistral3,
    "qwen3moe": qwen3moe,
    "gpt-oss": gpt_oss,
    "glm4moe": glm4moe,
    "llama4": llama4,
    "smollm3": smollm3,
    "olmo2": olmo2,
    "granite": granite,
    "glm4": glm4,
    "qwen2vl": qwen2vl,
    "qwen3vl": qwen3vl,
    "qwen35": qwen35,
    "qwen35moe": qwen35moe,
    "deepseek2": deepseek2,
}
