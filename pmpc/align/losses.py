"""DPO and QuadA losses.

DPO (Rafailov et al. 2023), per pair, with summed response log-probs::

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )

QuadA (arXiv 2502.00840, objective as stated on the project page; quada-paper.md section 1a)::

    L = DPO( pi^eps_theta  vs  pi_theta0 )  -  lambda * mean_{i != j} cos( f_1^eps(x_i), f_1^eps(x_j) )

* pi^eps_theta is the POLICY with the most vulnerable approximation (MVA) injected only in the first
  tau decoder layers (``simulate.approximate(..., layers=range(tau))``); the later layers run clean.
* pi_theta0 is the REFERENCE: the aligned starting model, clean. With LoRA it is the same module with
  the adapters disabled and no noise hooks.
* f_1^eps(x) is the output of the first decoder layer (``hidden_states[1]``) under that same
  perturbation, pooled over the tokens of the user's instruction (see :func:`pool`), for the
  HARMFUL prompts of the batch only (the page says the term clusters harmful activations).
Minimising L maximises the cosine term, i.e. pulls harmful prompts' layer-1 outputs together.

Plain DPO is the same function with no approximation and lambda = 0.

Optional ``kl`` > 0 adds ``kl x`` the mean per-token KL(anchor || policy) over the HARMLESS pairs'
chosen sequences (prompt and answer), the anchor being the raw base model (no adapter, clean):
where nothing should change, the policy's next-token distribution stays the base's. It is the
KL-to-reference penalty of RLHF (InstructGPT's is per token on the policy's samples; here on the
base's own helpful answers), and it is what pulls back the utility cost of safety training
(perplexity, over-refusal) that DPO from an aligned start cannot see: DPO's reference is that start.

Optional ``sft`` > 0 adds ``sft x`` the per-token NLL of the chosen responses (DPO + NLL, as in RPO,
Pang et al. 2024). Used to build smollm2-safe from a model that never refuses: measured here, pure
DPO with off-policy refusal templates as "chosen" drove the rejected (the model's own answers) down
by ~55 nats while the refusals' likelihood did not rise, and the model answered evasively instead of
refusing (GCG ASR 21/24). QuadA and "+DPO" start from smollm2-safe, whose refusals are on-policy,
and use pure DPO as the paper states.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from pmpc import simulate
from pmpc.errors import UserError

POOLS = ("mean", "last")


# -- pure functions ----------------------------------------------------------------------------
def response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the tokens marked by ``loss_mask`` [B, T] (the response tokens),
    each predicted from the logits at the previous position. Returns [B]."""
    logits = logits[:, :-1].float()
    target = input_ids[:, 1:]
    mask = loss_mask[:, 1:].to(logits.dtype)
    lp = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return (lp.view_as(mask) * mask).sum(-1)


def dpo_loss(pi_w: torch.Tensor, pi_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    """Mean DPO loss over pairs and its diagnostics (implicit rewards, accuracy, margin)."""
    rw = beta * (pi_w - ref_w)
    rl = beta * (pi_l - ref_l)
    losses = -F.logsigmoid(rw - rl)
    stats = {"reward_chosen": rw.mean().item(), "reward_rejected": rl.mean().item(),
             "reward_acc": (rw > rl).float().mean().item(), "margin": (rw - rl).mean().item()}
    return losses.mean(), stats


def mean_pairwise_cosine(h: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over all ordered pairs i != j of the rows of ``h`` [N, d] (N >= 2)."""
    n = h.shape[0]
    if n < 2:
        raise ValueError("mean pairwise cosine needs at least two rows")
    hn = F.normalize(h.float(), dim=-1)
    s = hn @ hn.t()
    return (s.sum() - s.diagonal().sum()) / (n * (n - 1))


def pool(hidden: torch.Tensor, content_mask: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Pool [B, T, d] hidden states over the prompt tokens marked in ``content_mask`` [B, T].

    ``mean`` (default): mean over the user's instruction tokens. ``last``: the last marked token.
    Why ``mean``: after ONE layer a token's state is still mostly its own embedding; the last
    prompt token of a chat template is the same fixed template token for every prompt, so its
    pairwise cosine is near 1 already and says little about the prompt, and the shared template /
    system tokens would dominate a mean over the whole prompt. The instruction tokens are what
    differs between prompts."""
    m = content_mask.to(hidden.dtype)
    if (m.sum(-1) == 0).any():
        raise ValueError("a prompt has no instruction tokens to pool")
    if how == "mean":
        return (hidden * m.unsqueeze(-1)).sum(1) / m.sum(-1, keepdim=True)
    if how == "last":
        T = m.shape[1]
        idx = (m * torch.arange(T, device=m.device, dtype=m.dtype)).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    raise UserError(f"unknown pooling {how!r}; choose from {', '.join(POOLS)}")


# -- model forwards ----------------------------------------------------------------------------
@dataclasses.dataclass
class Batch:
    """2B sequences: rows [0, B) are prompt+chosen, rows [B, 2B) prompt+rejected (right padded)."""
    input_ids: torch.Tensor        # [2B, T]
    attention_mask: torch.Tensor   # [2B, T]
    loss_mask: torch.Tensor        # [2B, T]  1 on response tokens
    content_mask: torch.Tensor     # [2B, T]  1 on the instruction tokens of the prompt
    harmful: torch.Tensor          # [B] bool
    index: torch.Tensor            # [B] pair index in the data set (for cached reference log-probs)

    @property
    def n_pairs(self) -> int:
        return self.harmful.shape[0]

    def to(self, device):
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def hf_model(model):
    """The transformers model under a peft wrapper (simulate hooks address its decoder layers)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _approx_ctx(model, approx, layers, seed):
    if approx is None:
        return contextlib.nullcontext()

    return simulate.approximate(hf_model(model), approx, layers=layers, seed=seed)


def _forward(model, batch: Batch, *, approx=None, layers=None, seed: int = 0, hidden: bool = False):
    with _approx_ctx(model, approx, layers, seed):
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     output_hidden_states=hidden, use_cache=False)


def sequence_logps(model, batch: Batch, *, approx=None, layers=None, seed: int = 0, hidden: bool = False):
    """Summed response log-probs [2B] (and hidden_states[1] if asked) of ``model`` on ``batch``,
    with ``approx`` injected in ``layers`` (None: clean)."""
    out = _forward(model, batch, approx=approx, layers=layers, seed=seed, hidden=hidden)
    lp = response_logprobs(out.logits, batch.input_ids, batch.loss_mask)
    return lp, (out.hidden_states[1] if hidden else None)


def anchor_rows(batch: Batch) -> torch.Tensor:
    """Row indices of the harmless pairs' chosen sequences: where the KL anchor applies."""
    return (~batch.harmful).nonzero().flatten()


@torch.no_grad()
def anchor_logits(anchor, batch: Batch) -> torch.Tensor | None:
    """The anchor model's logits on :func:`anchor_rows` (None when the batch has none)."""
    rows = anchor_rows(batch)
    if rows.numel() == 0:
        return None
    return anchor(input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows],
                  use_cache=False).logits


def token_kl(anchor_logits: torch.Tensor, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real next-token positions of KL(anchor || policy); logits [N, T, V], mask [N, T]
    (position t predicts token t+1, so it counts where token t+1 is real)."""
    la = F.log_softmax(anchor_logits[:, :-1].float(), -1)
    lp = F.log_softmax(logits[:, :-1].float(), -1)
    kl = (la.exp() * (la - lp)).sum(-1)
    m = attention_mask[:, 1:].to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1)


def adapters_disabled(model):
    """Context in which a peft model runs as its base (the reference). Plain models have no
    adapters: the caller must supply reference log-probs some other way."""
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    raise UserError("the reference is the base with adapters disabled: wrap the model with peft LoRA first")


@torch.no_grad()
def reference_logps(model, batch: Batch) -> torch.Tensor:
    """Clean reference log-probs [2B]: adapters disabled, no approximation, no gradient."""
    was_training = model.training
    model.eval()
    try:
        with adapters_disabled(model):
            lp, _ = sequence_logps(model, batch)
    finally:
        model.train(was_training)
    return lp


@dataclasses.dataclass
class QuadAConfig:
    beta: float = 0.1
    approx: object = None          # simulate spec (string or parsed) or None for plain DPO
    tau: int = 0                   # noise in decoder layers [0, tau)
    lam: float = 0.0               # weight of the clustering term
    pool: str = "mean"
    sft: float = 0.0               # weight of the chosen responses' per-token NLL (0: pure DPO)
    kl: float = 0.0                # weight of the per-token KL(base || policy) on harmless chosen sequences

    def validate(self, n_layers: int | None = None):
        if self.beta <= 0:
            raise UserError("beta must be > 0")
        if self.lam < 0:
            raise UserError("lambda must be >= 0")
        if self.sft < 0:
            raise UserError("the SFT weight must be >= 0")
        if self.kl < 0:
            raise UserError("the KL weight must be >= 0")
        if self.pool not in POOLS:
            raise UserError(f"unknown pooling {self.pool!r}; choose from {', '.join(POOLS)}")
        if self.approx is not None and self.tau < 1:
            raise UserError("tau must be >= 1 when training with noise")
        if n_layers is not None and self.tau > n_layers:
            raise UserError(f"tau={self.tau} exceeds the model's {n_layers} layers")


def quada_objective(model, batch: Batch, cfg: QuadAConfig, *, ref_logps: torch.Tensor | None = None,
                    seed: int = 0, anchor=None) -> tuple[torch.Tensor, dict]:
    """The QuadA loss on one batch (plain DPO when ``cfg.approx`` is None and ``cfg.lam`` is 0).

    ``ref_logps`` [2B]: cached clean reference log-probs; computed here (adapters disabled, no
    noise) when None. ``anchor``: the frozen model of the KL term (needed when ``cfg.kl`` > 0)."""
    B = batch.n_pairs
    if ref_logps is None:
        ref_logps = reference_logps(model, batch)
    layers = range(cfg.tau) if cfg.approx is not None else None
    need_h = cfg.lam > 0
    out = _forward(model, batch, approx=cfg.approx, layers=layers, seed=seed, hidden=need_h)
    lp = response_logprobs(out.logits, batch.input_ids, batch.loss_mask)
    h1 = out.hidden_states[1] if need_h else None
    loss, stats = dpo_loss(lp[:B], lp[B:], ref_logps[:B], ref_logps[B:], cfg.beta)
    stats["dpo_loss"] = loss.item()
    if cfg.sft > 0:
        # RPO-style anchor (Pang et al. 2024): per-token NLL of the chosen responses
        n_tok = batch.loss_mask[:B, 1:].sum(-1).clamp_min(1)
        nll = (-lp[:B] / n_tok).mean()
        loss = loss + cfg.sft * nll
        stats["sft_nll"] = nll.item()
    if cfg.kl > 0:
        if anchor is None:
            raise UserError("the KL term needs its anchor model")
        rows = anchor_rows(batch)
        if rows.numel():
            kl = token_kl(anchor_logits(anchor, batch), out.logits[rows], batch.attention_mask[rows])
            loss = loss + cfg.kl * kl
            stats["kl_base"] = kl.item()
    if need_h:
        # prompt tokens precede the response, so under a causal mask their layer-1 states are
        # the prompt's own; the chosen rows (first B) carry each prompt once.
        harm = batch.harmful
        if int(harm.sum()) >= 2:
            pooled = pool(h1[:B][harm], batch.content_mask[:B][harm], cfg.pool)
            cos = mean_pairwise_cosine(pooled)
            loss = loss - cfg.lam * cos
            stats["cos"] = cos.item()
    stats["loss"] = loss.item()
    return loss, stats


def balance_lambda(model, batch: Batch, cfg: QuadAConfig, ref_logps: torch.Tensor, seed: int = 0,
                   ratio: float = 1.0) -> dict:
    """lambda such that the clustering term's gradient norm is ``ratio`` x the DPO term's, both
    measured on ``batch`` at the current (starting) parameters, with the training noise on.

    The two terms have different units (a log-sigmoid of reward margins vs a cosine in [-1, 1])
    and touch different parameters (the cosine only sees layer 0), so a fixed lambda means
    different things on different models; matching gradient norms at the start makes the two
    objectives pull equally hard when training begins."""
    params = [p for p in model.parameters() if p.requires_grad]
    B = batch.n_pairs
    layers = range(cfg.tau) if cfg.approx is not None else None
    lp, h1 = sequence_logps(model, batch, approx=cfg.approx, layers=layers, seed=seed, hidden=True)
    dpo, _ = dpo_loss(lp[:B], lp[B:], ref_logps[:B], ref_logps[B:], cfg.beta)
    harm = batch.harmful
    if int(harm.sum()) < 2:
        raise UserError("balancing lambda needs a batch with at least two harmful prompts")
    cos = mean_pairwise_cosine(pool(h1[:B][harm], batch.content_mask[:B][harm], cfg.pool))
    g_dpo = torch.autograd.grad(dpo, params, retain_graph=True, allow_unused=True)
    g_cos = torch.autograd.grad(cos, params, allow_unused=True)
    norm = lambda gs: float(torch.sqrt(sum((g.float() ** 2).sum() for g in gs if g is not None)))  # noqa: E731
    nd, nc = norm(g_dpo), norm(g_cos)
    if nc == 0:
        raise UserError("the clustering term has no gradient on the trainable parameters (is layer 0 adapted?)")
    return {"lam": ratio * nd / nc, "grad_norm_dpo": nd, "grad_norm_cos": nc, "ratio": ratio,
            "cos_start": cos.item(), "dpo_start": dpo.item()}
