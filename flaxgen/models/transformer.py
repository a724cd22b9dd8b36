"""A decoder-only Transformer (GPT): pre-LayerNorm blocks, causal attention through
jax.nn.dot_product_attention (cuDNN flash attention on GPU, XLA elsewhere), GELU MLP, tied
embeddings, learned or rotary positions, GPT-2 init, and a KV-cache decoder in one jit.

Shapes in names: B batch, T query length, S key length / cache size, D width, N heads,
H head size, V padded vocabulary, L layers.
"""
from __future__ import annotations

import math
import time
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxgen.config import ConfigError
from flaxgen.models import Family, compute_dtype
from flaxgen.models.layers import Dense
from flaxgen.training.state import TrainState, gradient_step, make_optimizer


def defaults() -> dict:
    return {"model": {
        "family": "transformer",
        "vocab_size": None,        # None: the data's, padded to a multiple of 64
        "n_layer": 4,
        "n_head": 4,
        "d_model": 128,
        "dropout": 0.0,
        "positions": "learned",    # learned | rope
        "dtype": "float32",        # compute dtype; parameters stay float32
        "remat": False,
        "scan_layers": False,
        "attention": "auto",       # auto (einsum on CPU, cuDNN on GPUs for 16-bit inputs, else XLA) | einsum | xla | cudnn
    }}


def pad_vocab(size: int, multiple: int = 64) -> int:
    return -(-size // multiple) * multiple


def rotary(x_BxTxNxH, positions_BxT):
    half = x_BxTxNxH.shape[-1] // 2
    freqs = 1.0 / (10_000 ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = positions_BxT[..., None].astype(jnp.float32) * freqs           # B, T, H/2
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x1, x2 = x_BxTxNxH[..., :half].astype(jnp.float32), x_BxTxNxH[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x_BxTxNxH.dtype)


def einsum_causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH):
    """Causal softmax attention written out; the same function as jax.nn.dot_product_attention.

    On CPU it trains ~1.8x faster than jax's XLA path (fwd+bwd 2.4 vs 4.2 ms per layer at the
    CPU recipe's shape): jax's grouped-query layout adds a unit axis, and XLA:CPU's YNNPACK
    fusions run the softmax-backward reductions over such shapes ~10x below their speed.
    """
    T, H = q_BxTxNxH.shape[1], q_BxTxNxH.shape[-1]
    # Scaling q (T/H times fewer elements than the scores) and an additive mask constant:
    # ~10% off this function's fwd+bwd on CPU against scaling and masking the scores with where.
    q_BxTxNxH = q_BxTxNxH * jnp.asarray(1 / math.sqrt(H), q_BxTxNxH.dtype)
    scores_BxNxTxT = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH, k_BxTxNxH).astype(jnp.float32)
    causal_bias_TxT = np.where(np.tri(T, dtype=bool), 0.0, -1e30).astype(np.float32)
    scores_BxNxTxT = scores_BxNxTxT + causal_bias_TxT
    probs_BxNxTxT = jax.nn.softmax(scores_BxNxTxT, axis=-1).astype(v_BxTxNxH.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs_BxNxTxT, v_BxTxNxH)


def causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, implementation: str | None):
    """implementation None picks per backend: the written-out form on CPU; on GPUs, cuDNN's
    flash attention for 16-bit inputs of a shape jax accepts for it, else jax's XLA form."""
    if implementation is None:
        backend = jax.default_backend()
        if backend == "cpu":
            implementation = "einsum"
        elif backend == "gpu" and q_BxTxNxH.dtype in (jnp.bfloat16, jnp.float16):
            try:
                return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, is_causal=True,
                                                    implementation="cudnn")
            except (NotImplementedError, RuntimeError):  # jax's cuDNN checks run while tracing
                implementation = "xla"
        else:
            # jax's own None means XLA too: it does not choose cuDNN by itself (jax 0.10)
            implementation = "xla"
    if implementation == "einsum":
        return einsum_causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH)
    return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, is_causal=True,
                                        implementation=implementation)


class Attention(nn.Module):
    n_head: int
    d_model: int
    n_layer: int
    rope: bool
    dtype: jnp.dtype
    implementation: str | None

    @nn.compact
    def __call__(self, x_MxD, positions_BxT, cache=None):
        (B, T), D = positions_BxT.shape, x_MxD.shape[-1]
        N, H = self.n_head, D // self.n_head
        init = nn.initializers.normal(0.02)
        qkv_BxTx3xNxH = Dense(3 * D, dtype=self.dtype, kernel_init=init, name="qkv")(x_MxD).reshape(B, T, 3, N, H)
        # split, not indexing: its gradient is one concatenate instead of three padded copies
        q_BxTxNxH, k_BxTxNxH, v_BxTxNxH = (part[:, :, 0] for part in jnp.split(qkv_BxTx3xNxH, 3, axis=2))
        if self.rope:
            q_BxTxNxH, k_BxTxNxH = rotary(q_BxTxNxH, positions_BxT), rotary(k_BxTxNxH, positions_BxT)
        if cache is None:
            y = causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, self.implementation)
            new_cache = None
        else:
            # Write this chunk at its positions, then attend to every filled slot at or before the
            # query's position (positions are < S: past the context, decoding re-reads a window).
            k_cache, v_cache, slot_pos_BxS = cache
            slots = positions_BxT[0]
            k_cache = k_cache.at[:, slots].set(k_BxTxNxH.astype(k_cache.dtype))
            v_cache = v_cache.at[:, slots].set(v_BxTxNxH.astype(v_cache.dtype))
            slot_pos_BxS = slot_pos_BxS.at[:, slots].set(positions_BxT)
            q_pos, k_pos = positions_BxT[:, :, None], slot_pos_BxS[:, None, :]
            mask_BxTxS = (k_pos >= 0) & (k_pos <= q_pos)
            y = jax.nn.dot_product_attention(q_BxTxNxH, k_cache.astype(self.dtype),
                                             v_cache.astype(self.dtype), mask=mask_BxTxS[:, None],
                                             implementation="xla")
            new_cache = (k_cache, v_cache, slot_pos_BxS)
        residual_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.n_layer))
        out_MxD = Dense(D, dtype=self.dtype, kernel_init=residual_init, name="out")(y.reshape(B * T, D))
        return out_MxD, new_cache


class Block(nn.Module):
    n_head: int
    d_model: int
    n_layer: int
    dropout: float
    rope: bool
    dtype: jnp.dtype
    implementation: str | None

    @nn.compact
    def __call__(self, x_MxD, positions_BxT, cache, deterministic: bool):
        attention = Attention(self.n_head, self.d_model, self.n_layer, self.rope, self.dtype,
                              self.implementation)
        h, new_cache = attention(nn.LayerNorm(dtype=self.dtype)(x_MxD), positions_BxT, cache)
        x_MxD = x_MxD + nn.Dropout(self.dropout)(h, deterministic)
        init = nn.initializers.normal(0.02)
        residual_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.n_layer))
        h = Dense(4 * self.d_model, dtype=self.dtype, kernel_init=init)(nn.LayerNorm(dtype=self.dtype)(x_MxD))
        h = Dense(self.d_model, dtype=self.dtype, kernel_init=residual_init)(nn.gelu(h))
        return x_MxD + nn.Dropout(self.dropout)(h, deterministic), new_cache


class ScannedBlock(Block):
    """Block with the (carry, per-layer input) -> (carry, per-layer output) shape nn.scan wants."""

    @nn.compact
    def __call__(self, x_MxD, cache, positions_BxT, deterministic: bool):
        return Block.__call__(self, x_MxD, positions_BxT, cache, deterministic)


class GPT(nn.Module):
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    d_model: int
    dropout: float = 0.0
    rope: bool = False
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    scan_layers: bool = False
    implementation: str | None = None

    def setup(self):
        init = nn.initializers.normal(0.02)
        self.embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=init)
        if not self.rope:
            self.position_embed = nn.Embed(self.block_size, self.d_model, embedding_init=init)
        self.drop = nn.Dropout(self.dropout)
        self.final_norm = nn.LayerNorm(dtype=self.dtype)
        args = (self.n_head, self.d_model, self.n_layer, self.dropout, self.rope, self.dtype,
                self.implementation)
        if self.scan_layers:
            block = ScannedBlock
            if self.remat:
                block = nn.remat(block, static_argnums=(4,))
            self.blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                                  in_axes=(0, nn.broadcast, nn.broadcast), length=self.n_layer)(*args)
        else:
            block = nn.remat(Block, static_argnums=(4,)) if self.remat else Block
            self.blocks = [block(*args) for _ in range(self.n_layer)]

    def __call__(self, idx_BxT, positions_BxT=None, cache=None, deterministic: bool = True):
        """Logits (B, T, V) in float32, and the updated cache (None when not decoding)."""
        B, T = idx_BxT.shape
        h_MxD, new_cache = self.features(idx_BxT, positions_BxT, cache, deterministic)
        # The tied head in the compute dtype (at GPT-2 124M's shape it is a third of the matmul
        # FLOPs), its logits in float32 for sampling; the loss takes token_losses' path.
        logits_MxV = tied_head(h_MxD, self.embed.embedding.astype(self.dtype))
        return logits_MxV.reshape(B, T, -1), new_cache

    def token_losses(self, idx_BxT, targets_BxT, deterministic: bool = True):
        """Cross-entropy of each next token, (B*T,) in float32. In a 16-bit compute dtype the
        logits stay 16-bit, as autocast leaves them in PyTorch, with the softmax taken in float32:
        the logits and their gradient are the step's largest tensors (GPT-2 124M at batch 16:
        16384 x 50304), and on an H100 their float32 passes took 16% of the step."""
        h_MxD, _ = self.features(idx_BxT, deterministic=deterministic)
        embedding_VxD = self.embed.embedding.astype(self.dtype)
        targets_M = targets_BxT.reshape(-1)
        if self.dtype == jnp.float32:
            return optax.softmax_cross_entropy_with_integer_labels(tied_head(h_MxD, embedding_VxD), targets_M)
        return low_precision_cross_entropy(h_MxD @ embedding_VxD.T, targets_M)

    def features(self, idx_BxT, positions_BxT=None, cache=None, deterministic: bool = True):
        """The final LayerNorm's output (B*T, D) in the compute dtype, and the updated cache."""
        B, T = idx_BxT.shape
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
        x_BxTxD = self.embed(idx_BxT)
        if not self.rope:
            x_BxTxD = x_BxTxD + self.position_embed(positions_BxT)
        # Between attentions, activations are 2-D (M = B*T tokens): on XLA:CPU the weight
        # gradients of 3-D Dense inputs go through transposed copies, and an MLP's fwd+bwd takes
        # ~2x as long as on the same data in 2-D.
        x_MxD = self.drop(x_BxTxD.astype(self.dtype), deterministic).reshape(B * T, self.d_model)
        if self.scan_layers:
            x_MxD, new_cache = self.blocks(x_MxD, cache, positions_BxT, deterministic)
        else:
            new_cache = [] if cache is not None else None
            for i, block in enumerate(self.blocks):
                x_MxD, layer_cache = block(x_MxD, positions_BxT,
                                             None if cache is None else jax.tree.map(lambda c: c[i], cache),
                                             deterministic)
                if cache is not None:
                    new_cache.append(layer_cache)
            if cache is not None:
                new_cache = jax.tree.map(lambda *layers: jnp.stack(layers), *new_cache)
        return self.final_norm(x_MxD).astype(self.dtype), new_cache


def tied_head(x_MxD, embedding_VxD):
    """Float32 logits x @ embeddingᵀ, forward and backward in the operands' dtype. JAX's own
    backward of a dot with float32 output promotes bfloat16 operands to the float32 cotangent's
    type: at GPT-2 124M's shape that puts the step's two largest matmuls in float32."""
    if x_MxD.dtype == jnp.float32:
        return jnp.dot(x_MxD, embedding_VxD.T, preferred_element_type=jnp.float32)
    return _low_precision_head(x_MxD, embedding_VxD)


@jax.custom_vjp
def _low_precision_head(x_MxD, embedding_VxD):
    return jnp.dot(x_MxD, embedding_VxD.T, preferred_element_type=jnp.float32)


def _low_precision_head_forward(x_MxD, embedding_VxD):
    return _low_precision_head(x_MxD, embedding_VxD), (x_MxD, embedding_VxD)


def _low_precision_head_backward(residuals, g_MxV):
    x_MxD, embedding_VxD = residuals
    g_MxV = g_MxV.astype(x_MxD.dtype)
    g_x_MxD = jnp.dot(g_MxV, embedding_VxD, preferred_element_type=jnp.float32)
    g_embedding_VxD = jax.lax.dot_general(g_MxV, x_MxD, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return g_x_MxD.astype(x_MxD.dtype), g_embedding_VxD.astype(embedding_VxD.dtype)


_low_precision_head.defvjp(_low_precision_head_forward, _low_precision_head_backward)


@jax.custom_vjp
def low_precision_cross_entropy(logits_MxV, targets_M):
    """optax.softmax_cross_entropy_with_integer_labels of 16-bit logits, in float32 inside: one
    fused pass reads the 16-bit logits and writes their 16-bit gradient, where autodiff of an
    upcast would write and read the gradient in float32 first."""
    return _cross_entropy_forward(logits_MxV, targets_M)[0]


def _cross_entropy_forward(logits_MxV, targets_M):
    logits_MxV_f32 = logits_MxV.astype(jnp.float32)
    log_normaliser_M = jax.nn.logsumexp(logits_MxV_f32, axis=-1)
    target_logit_M = jnp.take_along_axis(logits_MxV_f32, targets_M[:, None], axis=-1)[:, 0]
    return log_normaliser_M - target_logit_M, (logits_MxV, log_normaliser_M, targets_M)


def _cross_entropy_backward(residuals, g_M):
    logits_MxV, log_normaliser_M, targets_M = residuals
    probabilities_MxV = jnp.exp(logits_MxV.astype(jnp.float32) - log_normaliser_M[:, None])
    is_target_MxV = targets_M[:, None] == jnp.arange(logits_MxV.shape[-1])[None, :]
    g_MxV = (probabilities_MxV - is_target_MxV) * g_M[:, None]
    return g_MxV.astype(logits_MxV.dtype), None


low_precision_cross_entropy.defvjp(_cross_entropy_forward, _cross_entropy_backward)


def empty_cache(model: GPT, batch: int):
    """Per-layer keys, values (L, B, S, N, H) and each slot's position (L, B, S), -1 = empty."""
    H = model.d_model // model.n_head
    shape = (model.n_layer, batch, model.block_size, model.n_head, H)
    return (jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype),
            jnp.full((model.n_layer, batch, model.block_size), -1, jnp.int32))


def filter_logits(logits_BxV, temperature: float, top_k: int | None, top_p: float | None):
    logits_BxV = logits_BxV / temperature
    if top_k:
        kth = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth, -jnp.inf, logits_BxV)
    if top_p is not None and top_p < 1.0:
        sorted_desc = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_desc, -1), -1)
        # the smallest logit still inside the nucleus (the top token always is)
        inside = jnp.sum(cumulative - jax.nn.softmax(sorted_desc, -1) < top_p, -1, keepdims=True)
        threshold = jnp.take_along_axis(sorted_desc, inside - 1, -1)
        logits_BxV = jnp.where(logits_BxV < threshold, -jnp.inf, logits_BxV)
    return logits_BxV


def generate(model: GPT, params, prompt_T, key, *, n: int, max_new_tokens: int, temperature: float,
             top_k: int | None, top_p: float | None, real_vocab: int, stop_tokens: tuple = ()):
    """n continuations of one prompt, decoded in one jit with a KV cache. Greedy at temperature 0.
    Returns (tokens (n, P + max_new), number of valid tokens per row)."""
    P, S = prompt_T.shape[0], model.block_size
    total = P + max_new_tokens
    tokens_BxL = jnp.zeros((n, total), jnp.int32).at[:, :P].set(prompt_T[None, :])
    apply = partial(model.apply, {"params": params})
    positions = jnp.broadcast_to(jnp.arange(P), (n, P))
    logits, cache = apply(tokens_BxL[:, :P], positions, empty_cache(model, n))
    stop = jnp.asarray(stop_tokens, jnp.int32) if stop_tokens else None

    def choose(logits_BxV, step_key):
        logits_BxV = jnp.where(jnp.arange(logits_BxV.shape[-1]) < real_vocab, logits_BxV, -jnp.inf)
        if temperature == 0:
            return jnp.argmax(logits_BxV, -1).astype(jnp.int32)
        filtered = filter_logits(logits_BxV, temperature, top_k, top_p)
        return jax.random.categorical(step_key, filtered, -1).astype(jnp.int32)

    def next_logits(tokens_BxL, cache, pos):
        """Logits after the token at `pos`: one cached step while inside the context; past it, a
        forward pass over the last S tokens (the model sees a cropped context, as in training)."""
        cached = lambda: _cached_step(apply, tokens_BxL, cache, pos)
        if total <= S:
            return cached()
        def window():
            recent = jax.lax.dynamic_slice_in_dim(tokens_BxL, pos - S + 1, S, axis=1)
            return apply(recent)[0][:, -1], cache
        return jax.lax.cond(pos < S, cached, window)

    def body(carry):
        pos, tokens_BxL, cache, logits_BxV, length_B = carry
        token_B = choose(logits_BxV, jax.random.fold_in(key, pos))
        tokens_BxL = tokens_BxL.at[:, pos].set(token_B)
        length_B = jnp.where(length_B == total, _stop_length(tokens_BxL, pos, stop, total), length_B)
        logits_BxV, cache = next_logits(tokens_BxL, cache, pos)
        return pos + 1, tokens_BxL, cache, logits_BxV, length_B

    def cond(carry):
        pos, _, _, _, length_B = carry
        return (pos < total) & jnp.any(length_B == total)

    length_B = jnp.full((n,), total, jnp.int32)
    _, tokens_BxL, _, _, length_B = jax.lax.while_loop(cond, body, (P, tokens_BxL, cache, logits[:, -1], length_B))
    return tokens_BxL, length_B


def _cached_step(apply, tokens_BxL, cache, pos):
    token_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxL, pos, 1, axis=1)
    positions = jnp.full(token_Bx1.shape, pos, jnp.int32)
    logits, cache = apply(token_Bx1, positions, cache)
    return logits[:, -1], cache


def _stop_length(tokens_BxL, pos, stop, total):
    """pos + 1 where the tokens ending at pos spell the stop sequence, else `total`."""
    if stop is None:
        return jnp.full((tokens_BxL.shape[0],), total, jnp.int32)
    k = stop.shape[0]
    tail = jax.lax.dynamic_slice_in_dim(tokens_BxL, jnp.maximum(pos - k + 1, 0), k, axis=1)
    hit = jnp.all(tail == stop[None, :], -1) & (pos + 1 >= k)
    return jnp.where(hit, pos + 1, total).astype(jnp.int32)


def build_model(config, info) -> GPT:
    m = config.model
    vocab = pad_vocab(m.vocab_size or info["vocab_size"])
    if m.d_model % m.n_head:
        raise ConfigError(f"model.d_model {m.d_model} must be a multiple of model.n_head {m.n_head}")
    if m.positions not in ("learned", "rope"):
        raise ConfigError(f"config key 'model.positions' is {m.positions!r}; use learned or rope")
    if m.attention not in ("auto", "einsum", "xla", "cudnn"):
        raise ConfigError(f"config key 'model.attention' is {m.attention!r}; use auto, einsum, xla or cudnn")
    implementation = None if m.attention == "auto" else m.attention
    return GPT(vocab, info["block_size"], m.n_layer, m.n_head, m.d_model, m.dropout, m.positions == "rope",
               compute_dtype(m), m.remat, m.scan_layers, implementation)


def make(config, info) -> Family:
    model = build_model(config, info)
    tx = make_optimizer(config.optim, config.train.steps)
    tokenizer = info.get("tokenizer")
    real_vocab = info["vocab_size"]

    def init(key, batch):
        params = model.init(key, batch["inputs"][:1])["params"]
        return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))

    def cross_entropy(params, batch, dropout_key=None):
        losses_M = model.apply({"params": params}, batch["inputs"], batch["targets"], dropout_key is None,
                               rngs={"dropout": dropout_key} if dropout_key is not None else {},
                               method=GPT.token_losses)
        return losses_M.mean()

    def loss_fn(params, batch, key, indices):
        # Dropout masks come from the step key folded with this replica's first example, so
        # replicas draw different masks.
        dropout_key = jax.random.fold_in(key, indices[0]) if config.model.dropout else None
        return cross_entropy(params, batch, dropout_key), {}

    def eval_step(state, batch, key):
        loss = cross_entropy(state.params, batch)
        return {"loss": loss, "perplexity": jnp.exp(loss), "bits_per_token": loss / math.log(2)}

    def encode_prompt(prompt: str | None):
        if tokenizer is None:
            return np.zeros((1,), np.int32) if not prompt else np.asarray([int(t) for t in prompt.split()], np.int32)
        if not prompt:
            # Stated behaviour: an empty prompt starts from a newline (token 0 if there is none).
            newline = tokenizer.index.get("\n", 0) if tokenizer.kind == "char" else 10
            return np.asarray([newline], np.int32)
        return tokenizer.encode(prompt)

    def decode_text(tokens) -> str:
        return tokenizer.decode(tokens) if tokenizer else " ".join(str(int(t)) for t in tokens)

    def sample(state, key, n: int = 1, prompt: str | None = None, max_new_tokens: int = 200,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               stop: str | None = None, timings: dict | None = None):
        """n continuations of `prompt` as strings (prompt included). A `timings` dict is filled
        with compile_s, decode_s and decoded_tokens (all rows, up to the last row's stop)."""
        prompt_tokens = encode_prompt(prompt)
        if len(prompt_tokens) >= model.block_size:
            raise ValueError(f"the prompt is {len(prompt_tokens)} tokens but the model's context is "
                             f"{model.block_size}; shorten it to at most {model.block_size - 1} tokens")
        if temperature < 0 or max_new_tokens < 1:
            raise ValueError("--temperature must be >= 0 and --max-new-tokens >= 1")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
        stop_tokens = tuple(int(t) for t in encode_prompt(stop)) if stop else ()
        args = (state.params, jnp.asarray(prompt_tokens), key)
        options = dict(n=n, max_new_tokens=max_new_tokens, temperature=float(temperature),
                       top_k=top_k, top_p=top_p, stop_tokens=stop_tokens)
        if timings is None:
            tokens, lengths = generate_jit(*args, **options)
        else:
            # Compiled apart so that the decode time excludes compilation.
            start = time.perf_counter()
            compiled = generate_jit.lower(*args, **options).compile()
            timings["compile_s"] = time.perf_counter() - start
            start = time.perf_counter()
            tokens, lengths = jax.block_until_ready(compiled(*args))
            timings["decode_s"] = time.perf_counter() - start
            timings["decoded_tokens"] = n * (int(np.max(lengths)) - len(prompt_tokens))
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        return [decode_text(row[:length]) for row, length in zip(tokens, lengths)]

    generate_jit = jax.jit(partial(generate, model, real_vocab=real_vocab),
                           static_argnames=("n", "max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens"))

    def evaluate(state, source, key):
        from flaxgen.evaluation import mean_over_batches
        metrics = mean_over_batches(jax.jit(eval_step), state, source, key, config,
                                    max_batches=config.eval.batches or 20)
        if tokenizer is not None and tokenizer.kind == "char":
            metrics["bits_per_char"] = metrics["bits_per_token"]
        return metrics

    def pictures(state, source, key, outdir, step):
        from pathlib import Path
        text = sample(state, key, 1, max_new_tokens=300)[0]
        path = Path(outdir) / f"sample_{step:07d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        return [path]

    def flops_per_example(train: bool = True):
        from flaxgen.flops import transformer_flops_per_token
        abstract = jax.eval_shape(init, jax.random.key(0), {"inputs": jnp.zeros((1, model.block_size), jnp.int32)})
        total = sum(x.size for x in jax.tree.leaves(abstract.params))
        if not model.rope:
            total -= model.block_size * model.d_model   # position embeddings do no matmul
        per_token = transformer_flops_per_token(total, model.n_layer, model.n_head,
                                                model.d_model // model.n_head, model.block_size, train)
        return per_token * model.block_size

    return Family("transformer", init, gradient_step(tx, loss_fn, config.optim), eval_step,
                  sample, evaluate, pictures, flops_per_example,
                  tokens_per_example=model.block_size)
