"""The retrieval-augmented imputation model.

A BERT-style encoder over one haplotype window (tokens PAD / MASK / REF / ALT, site position, allele
frequency) that, at every hidden site, attends over the K retrieved reference haplotypes. The retrieved
haplotypes do not go through the transformer: a light encoder turns each (neighbour, site) pair into a
vector from the neighbour's allele and how well it matches the query around that site (mismatch counts
at several scales, lengths of the matching runs on either side). Per-site cross-attention over those
vectors is a learned version of Li and Stephens' copying model: copy from the haplotypes that match
here. One softmax weighs the neighbours.

Self-attention uses the observed sites as keys (all the query's information is there) plus one learned
null key, so a window with no observed site still works. The output at a hidden site therefore depends
on the observed sites and that site's own neighbours only, not on which other hidden sites are in the
batch: training on a sample of hidden sites and imputing all of them compute the same function, and
padded positions (short windows) are neither keys nor outputs.

Shapes: B batch, L sites in the window, M observed sites, S sites to predict, K neighbours, D width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import MAF_BINS
from .tokens import ALT, MASK, REF

# Half-widths (in sites) of the windows in which mismatches with each neighbour are counted.
MATCH_SCALES = (4, 16, 64, 256, 1024)
N_MATCH_FEATURES = 2 * len(MATCH_SCALES) + 9


@dataclass
class ModelConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_neighbour: int = 32  # width of the light neighbour encoder
    dropout: float = 0.1
    use_retrieval: bool = True
    vocab_size: int = 4
    # Li-Stephens copying models over the retrieved haplotypes, whose posteriors are neighbour features:
    # per-bp switch rates between haplotypes (one model each; the first is the output's baseline), and
    # the copying error (mismatch) probability. Slow switching suits common variants, faster rare ones.
    hmm_switch_rates: tuple[float, ...] = (3e-6, 1e-5)
    hmm_error: float = 1e-4
    # The network attends, at each site, to this many candidates with the highest copying posterior
    # (0 = all K); the copying model itself always uses all K.
    attend_k: int = 16
    # The output refines the engine's P(ALT) (``ragimpute.engine``: the copying model on composite
    # states over the whole chromosome), given as ``prior``; False: its own window copying model.
    use_prior: bool = False

    def __post_init__(self) -> None:
        self.hmm_switch_rates = tuple(float(r) for r in self.hmm_switch_rates)
        if not self.hmm_switch_rates:
            raise ValueError("hmm_switch_rates needs at least one rate")

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        presets = {
            "tiny": dict(d_model=32, n_layers=1, n_heads=2, d_neighbour=16),
            "small": dict(d_model=64, n_layers=2, n_heads=4, d_neighbour=32),
            "large": dict(d_model=256, n_layers=6, n_heads=8, d_neighbour=64),
        }
        if name not in presets:
            raise ValueError(f"model preset must be one of {sorted(presets)}, got {name!r}")
        return cls(**{**presets[name], **overrides})


def observed_sites(tokens: torch.Tensor) -> torch.Tensor:
    """Indices of the observed sites; masks are per site, so every row of a batch must agree."""
    obs = (tokens == REF) | (tokens == ALT)
    if tokens.shape[0] > 1 and not bool((obs == obs[:1]).all()):
        raise ValueError(
            "rows of a batch observe different sites; batch windows tokenized with one mask"
        )
    return torch.nonzero(obs[0], as_tuple=False).squeeze(-1)


def hidden_sites(tokens: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(tokens[0] == MASK, as_tuple=False).squeeze(-1)


def site_features(af: torch.Tensor, hmm_dosage: torch.Tensor) -> torch.Tensor:
    """AF (T,) on linear and both log scales, and the copying models' ALT probabilities (B, T, R) as logits.

    Returns (B, T, 3 + R).
    """
    eps = 1e-4
    f = torch.stack([af, torch.log(af + eps), torch.log(1 - af + eps)], dim=-1)  # (T, 3)
    p = hmm_dosage.clamp(1e-4, 1 - 1e-4)
    return torch.cat([f[None].expand(p.shape[0], -1, -1), torch.logit(p)], -1)


class CopyingHMM:
    """Li and Stephens' copying model over K candidate haplotypes, forward-backward done once per window.

    mism (B, K, M) bool: candidate k differs from the query at observed site m; pos_obs (M,) bp of the
    observed sites (sorted). Between positions d bp apart the copied haplotype switches (to one of the K,
    uniformly) with probability 1 - exp(-switch_rate d); a copied allele differs with probability ``error``.
    ``posterior(pos_at)`` then reads the copying posterior off at any sites, observed or not.
    """

    @torch.no_grad()
    def __init__(self, mism: torch.Tensor, pos_obs: torch.Tensor, switch_rate: float, error: float):
        B, K, M = mism.shape
        self.shape = (B, K, M)
        self.pos_obs = pos_obs
        self.rate = switch_rate
        if M == 0:
            return
        dev = mism.device
        emit = torch.where(
            mism, torch.tensor(error, device=dev), torch.tensor(1.0 - error, device=dev)
        )
        stay = torch.exp(-switch_rate * (pos_obs[1:] - pos_obs[:-1]).float())  # (M-1,)
        fwd = torch.empty(B, K, M, device=dev)
        cur = emit[..., 0] / K
        fwd[..., 0] = cur = cur / cur.sum(1, keepdim=True)
        for j in range(1, M):
            cur = emit[..., j] * (stay[j - 1] * cur + (1 - stay[j - 1]) / K)
            fwd[..., j] = cur = cur / cur.sum(1, keepdim=True)
        # bwd_e[..., j] = emit_j * beta_j: what the sites from j on say about the state at j.
        bwd_e = torch.empty(B, K, M, device=dev)
        cur = emit[..., M - 1]
        bwd_e[..., M - 1] = cur = cur / cur.sum(1, keepdim=True)
        for j in range(M - 2, -1, -1):
            beta = stay[j] * cur + (1 - stay[j]) * cur.sum(1, keepdim=True) / K
            cur = emit[..., j] * beta
            bwd_e[..., j] = cur = cur / cur.sum(1, keepdim=True)
        self.fwd, self.bwd_e = fwd, bwd_e

    def _stay(self, d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        s = torch.exp(-self.rate * d.float().clamp(min=0))
        return torch.where(valid, s, torch.zeros_like(s))

    def _beta_from(self, j: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """What observed sites j, j+1, ... say about the state d bp before site j (uniform past the end)."""
        M = self.shape[2]
        be = self.bwd_e[..., j.clamp(max=M - 1)]
        s = self._stay(d, j < M)
        return s * be + (1 - s) * be.sum(1, keepdim=True) / self.shape[1]

    @torch.no_grad()
    def posterior(self, pos_at: torch.Tensor) -> torch.Tensor:
        """(B, K, T) copying posterior at the sites ``pos_at`` (bp); uniform with no observed site."""
        B, K, M = self.shape
        if M == 0:
            return torch.full((B, K, len(pos_at)), 1.0 / K, device=pos_at.device)
        pos_obs = self.pos_obs
        j = torch.searchsorted(pos_obs, pos_at)  # a site lies between observed sites j-1 and j
        jc = j.clamp(max=M - 1)
        is_obs = (j < M) & (pos_obs[jc] == pos_at)
        left = (j - 1).clamp(min=0)
        s = self._stay(pos_at - pos_obs[left], j > 0)
        alpha = s * self.fwd[..., left] + (1 - s) / K  # uniform before the first observed site
        post = alpha * self._beta_from(j, pos_obs[jc] - pos_at)
        # At an observed site the forward already holds its emission: posterior = fwd * beta after it.
        nxt = j + 1
        post_obs = self.fwd[..., jc] * self._beta_from(nxt, pos_obs[nxt.clamp(max=M - 1)] - pos_at)
        post = torch.where(is_obs, post_obs, post)
        return post / post.sum(1, keepdim=True)


def li_stephens_posterior(
    mism: torch.Tensor,
    pos_obs: torch.Tensor,
    pos_at: torch.Tensor,
    switch_rate: float,
    error: float,
) -> torch.Tensor:
    """Copying posterior (B, K, T) at ``pos_at`` (see ``CopyingHMM``)."""
    return CopyingHMM(mism, pos_obs, switch_rate, error).posterior(pos_at)


class MatchContext:
    """How each neighbour matches the query around any site, prepared once per window.

    tokens (B, L) query tokens; neighbours (B, K, L) alleles 0/1; distances (B, K) Hamming on the observed
    sites; pos (L,) bp. Mismatches can only happen at observed sites, so every running sum is kept over
    the M observed sites, not the L sites of the window, and sites map onto them by binary search.
    ``features(idx, posterior)`` reads the per-(neighbour, site) features off at the sites idx.
    """

    @torch.no_grad()
    def __init__(
        self,
        tokens: torch.Tensor,
        neighbours: torch.Tensor,
        distances: torch.Tensor,
        pos: torch.Tensor,
    ):
        B, K, L = neighbours.shape
        self.shape = (B, K, L)
        self.neighbours = neighbours
        self.distances = distances
        self.pos = pos
        self.obs = observed_sites(tokens)  # (M,) site indices, shared by every row
        M = len(self.obs)
        query = (tokens[:, self.obs] == ALT).to(neighbours.dtype)
        mism = neighbours[:, :, self.obs] != query[:, None, :]  # (B, K, M)
        self.c_mm = F.pad(mism.float().cumsum(-1), (1, 0))  # (B, K, M+1)
        m = torch.arange(M, device=tokens.device)
        self.last = (
            torch.where(mism, m, torch.full_like(m, -1)).cummax(-1).values
        )  # last mismatch at or before m
        first_rev = torch.where(mism.flip(-1), m, torch.full_like(m, -1)).cummax(-1).values.flip(-1)
        self.next = torch.where(
            first_rev >= 0, M - 1 - first_rev, torch.full_like(first_rev, M)
        )  # first at/after m
        self.n_obs_window = float(max(M, 1))

    @torch.no_grad()
    def features(
        self, idx: torch.Tensor, posteriors: list[torch.Tensor], sel: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, J, T, F) at the sites idx (T,) for the neighbours sel (B, J, T) of each site (default: all K).

        posteriors: (B, K, T) from each CopyingHMM. F = N_MATCH_FEATURES + 2 per copying model. Every
        quantity is gathered straight at (selected neighbour, site): nothing of size B x K x T x F is built.
        """
        B, K, L = self.shape
        T = len(idx)
        if sel is None:
            sel = torch.arange(K, device=idx.device)[None, :, None].expand(B, K, T)
        J = sel.shape[1]

        def take(x: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
            """x (B, K, C) at rows sel and columns col (T,) -> (B, J, T)."""
            flat = sel * x.shape[-1] + col[None, None, :]
            return x.reshape(B, -1).gather(1, flat.reshape(B, -1)).view(B, J, T)

        obs, M = self.obs, len(self.obs)
        before = torch.searchsorted(obs, idx)  # observed sites strictly before each site
        upto = torch.searchsorted(obs, idx, right=True)  # ... at or before it
        feats = []
        for w in MATCH_SCALES:
            lo = torch.searchsorted(obs, idx - w)
            hi = torch.searchsorted(obs, idx + w, right=True)
            n_mm = take(self.c_mm, hi) - take(self.c_mm, lo)
            feats += [torch.log1p(n_mm), n_mm / ((hi - lo).float() + 1.0)]
        # Matching run to the left of (and including) each site: observed sites since the last mismatch.
        last = take(F.pad(self.last, (1, 0), value=-1), upto)  # (B, J, T); -1 = none
        left_obs = upto.float() - (last + 1).float()
        # ... and to the right of it: observed sites after the site, before the next mismatch.
        nxt = take(F.pad(self.next, (0, 1), value=M), before)  # (B, J, T); M = none
        right_obs = (nxt - upto).float().clamp(min=0)  # 0 at an observed mismatch itself
        posf = self.pos.float()
        here = posf[idx][None, None, :]
        obs_pos = torch.cat([posf[obs], posf[-1:]])  # past the last observed site: the window's end
        left_bp = here - torch.where(last >= 0, obs_pos[last.clamp(min=0)], posf[0])
        right_bp = obs_pos[nxt] - here
        feats += [
            torch.log1p(left_obs),
            torch.log1p(right_obs),
            (last < 0).float(),  # no mismatch up to the window's left edge
            (nxt >= M).float(),  # ... or to its right edge
            torch.log1p(left_bp.clamp(min=0) / 1000.0),
            torch.log1p(right_bp.clamp(min=0) / 1000.0),
            (self.distances.gather(1, sel.reshape(B, -1)).view(B, J, T) / self.n_obs_window),
            sel.float() / max(K, 1),  # retrieval rank
            take(self.neighbours, idx).float(),  # the neighbour's own allele here
        ]
        for post in posteriors:
            p = post.gather(1, sel)
            feats += [p * K, torch.log(p + 1e-6)]  # K * post = 1: no preference among the K
        return torch.stack(feats, dim=-1)


def neighbour_features(
    tokens: torch.Tensor,
    neighbours: torch.Tensor,
    distances: torch.Tensor,
    pos: torch.Tensor,
    idx: torch.Tensor,
    posteriors: list[torch.Tensor],
) -> torch.Tensor:
    """How each neighbour matches the query around the sites idx: (B, K, T, F)."""
    return MatchContext(tokens, neighbours, distances, pos).features(idx, posteriors)


class SelfAttention(nn.Module):
    """Every site attends to the observed sites (the first M of the sequence) and a learned null key."""

    def __init__(self, d: int, h: int, dropout: float):
        super().__init__()
        self.h = h
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.null_kv = nn.Parameter(torch.zeros(1, 1, 2 * d))
        self.out = nn.Linear(d, d)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, n_obs: int) -> torch.Tensor:
        B, T, D = x.shape
        hs = D // self.h
        q = self.q(x).view(B, T, self.h, hs).transpose(1, 2)  # (B, H, T, hs)
        kv = torch.cat([self.null_kv.expand(B, 1, 2 * D), self.kv(x[:, :n_obs])], 1)  # (B, 1+M, 2D)
        k, v = kv.view(B, 1 + n_obs, 2, self.h, hs).permute(2, 0, 3, 1, 4)  # (B, H, 1+M, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class NeighbourAttention(nn.Module):
    """Per-site multi-head cross-attention from the query's hidden state to the K neighbours at that site.

    Keys and values are linear in the neighbour encoding e (B, T, K, d_nb), so q·(W_k e) = (W_kᵀ q)·e and
    Σ a W_v e = W_v Σ a e: queries are projected into the encoder's small space and the (B, T, K, D)
    key/value tensors are never built. Same function as standard attention, a fraction of the memory.
    """

    def __init__(self, d: int, h: int, d_nb: int):
        super().__init__()
        self.h = h
        self.d_nb = d_nb
        self.q = nn.Linear(d, h * d_nb)
        self.v = nn.Parameter(torch.randn(h, d_nb, d // h) * 0.02)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.h, self.d_nb)
        att = ((q @ e.transpose(-1, -2)) / math.sqrt(self.d_nb)).softmax(-1)  # (B, T, H, K)
        mixed = att @ e  # (B, T, H, d_nb)
        y = torch.einsum("bthn,hns->bths", mixed, self.v)  # (B, T, H, hs)
        return self.out(y.reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.n_heads, cfg.dropout)
        self.use_retrieval = cfg.use_retrieval
        if cfg.use_retrieval:
            self.ln2 = nn.LayerNorm(d)
            self.cross = NeighbourAttention(d, cfg.n_heads, cfg.d_neighbour)
        self.ln3 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(cfg.dropout)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, n_obs: int, nb: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), n_obs))
        if nb is not None:
            x = x + self.drop(self.cross(self.ln2(x), nb))
        return x + self.mlp(self.ln3(x))


class ImputationModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")
        self.cfg = cfg
        d = cfg.d_model
        self.tok = nn.Embedding(cfg.vocab_size, d)
        n_rates = len(cfg.hmm_switch_rates) if cfg.use_retrieval else 1
        n_site = 3 + n_rates + int(cfg.use_prior)
        self.site = nn.Sequential(nn.Linear(n_site, d), nn.GELU(), nn.Linear(d, d))
        if cfg.use_retrieval:
            self.nb_encoder = nn.Sequential(
                nn.Linear(N_MATCH_FEATURES + 2 * n_rates, cfg.d_neighbour),
                nn.GELU(),
                nn.Linear(cfg.d_neighbour, cfg.d_neighbour),
            )
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)
        self.apply(self._init)
        # The output refines a prior: logit = logit(prior) + correction, the prior being the copying
        # model's ALT probability (with retrieval) or the reference allele frequency (without). The
        # correction starts at zero, so an untrained model already answers like its prior.
        nn.init.zeros_(self.head.weight)
        # The share of the correction applied at a site, per MAF bin of the allele frequency it is
        # given (metrics.MAF_BINS): 1 while training; the train stage then chooses it on validation
        # (``train.correction_by_maf``), so that the network does not move the prior in a bin where
        # that made validation worse. A buffer: saved with the weights and covered by their digest.
        self.register_buffer("correction_scale", torch.ones(len(MAF_BINS)))
        self.register_buffer(
            "maf_edges", torch.tensor([b[1] for b in MAF_BINS[:-1]]), persistent=False
        )

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # a model saved before the scale existed applies its whole correction everywhere, as it did
        key = prefix + "correction_scale"
        if key not in state_dict:
            state_dict[key] = torch.ones_like(self.correction_scale)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def maf_bins(self, af: torch.Tensor) -> torch.Tensor:
        """MAF bin of each allele frequency (0 and MAF <= 0.5 % in the first, as ``metrics.maf_bin``)."""
        maf = torch.minimum(af, 1 - af).float()
        return torch.bucketize(maf, self.maf_edges.to(maf.dtype), right=False)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def _bp_encoding(self, offset_bp: torch.Tensor) -> torch.Tensor:
        """Sinusoidal encoding of the distance (bp) from the window's first site; wavelengths 100 bp-10 Mb."""
        d = self.cfg.d_model
        j = torch.arange(d // 2, device=offset_bp.device, dtype=torch.float32)
        wavelength = 100.0 * (1e5 ** (j / max(d // 2 - 1, 1)))
        ang = offset_bp.float()[..., None] * (2 * math.pi / wavelength)
        return torch.cat([torch.sin(ang), torch.cos(ang)], -1)

    def _embed(
        self,
        tokens: torch.Tensor,
        af: torch.Tensor,
        pos: torch.Tensor,
        idx: torch.Tensor,
        hmm_dosage: torch.Tensor,
    ) -> torch.Tensor:
        """Input embedding of the sites ``idx``: (B, T, D)."""
        return (
            self.tok(tokens[:, idx])
            + self.site(site_features(af[idx], hmm_dosage))
            + self._bp_encoding(pos[idx] - pos[0])[None]
        )

    def prepare(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor,
        neighbours: torch.Tensor | None = None,
        distances: torch.Tensor | None = None,
    ) -> dict:
        """Everything about a window that does not depend on the sites asked (running sums, the HMM)."""
        obs = observed_sites(tokens)
        ctx: dict = {"obs": obs}
        if self.cfg.use_retrieval:
            if neighbours is None or distances is None:
                raise ValueError(
                    "this model was built with retrieval: pass neighbours and distances"
                )
            query = (tokens[:, obs] == ALT).to(neighbours.dtype)
            mism = neighbours[:, :, obs] != query[:, None, :]
            ctx["hmm"] = [
                CopyingHMM(mism, pos[obs], r, self.cfg.hmm_error) for r in self.cfg.hmm_switch_rates
            ]
            ctx["match"] = MatchContext(tokens, neighbours, distances, pos)
        return ctx

    def forward(
        self,
        tokens: torch.Tensor,
        af: torch.Tensor,
        pos: torch.Tensor,
        neighbours: torch.Tensor | None = None,
        distances: torch.Tensor | None = None,
        sites: torch.Tensor | None = None,
        ctx: dict | None = None,
        prior: torch.Tensor | None = None,
        parts: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """ALT logits (B, S) at ``sites`` (default: every hidden site, in order).

        tokens (B, L); af, pos (L,); neighbours (B, K, L) alleles; distances (B, K). ``ctx`` from
        ``prepare`` (same tokens and neighbours) saves recomputing the window when sites come in chunks.
        prior (B, L): the engine's P(ALT), which the output refines (models with ``use_prior``).
        ``parts``: the prior's logit and the whole correction, apart (the logits are the first plus
        ``correction_scale`` of the site's MAF bin times the second).
        """
        if self.cfg.use_prior and prior is None:
            raise ValueError("this model refines the engine's prior: pass prior")
        if ctx is None:
            ctx = self.prepare(tokens, pos, neighbours, distances)
        obs = ctx["obs"]
        if sites is None:
            sites = hidden_sites(tokens)
        idx = torch.cat([obs, sites])
        nb = None
        if self.cfg.use_retrieval:
            posts = [h.posterior(pos[idx]) for h in ctx["hmm"]]  # each (B, K, T)
            alleles = neighbours[:, :, idx]
            hmm_dosage = torch.stack([(p * alleles).sum(1) for p in posts], -1)  # (B, T, R)
            sel = None
            K = neighbours.shape[1]
            if 0 < self.cfg.attend_k < K:
                sel = sum(posts).topk(self.cfg.attend_k, dim=1).indices  # (B, J, T)
            f = ctx["match"].features(idx, posts, sel)  # (B, J, T, F)
            nb = self.nb_encoder(f.transpose(1, 2))  # (B, T, K, d_nb), shared by every block
        else:
            hmm_dosage = af[idx][None, :, None].expand(tokens.shape[0], -1, 1)
        if self.cfg.use_prior:
            # the prior is the last site feature and the baseline of the output
            hmm_dosage = torch.cat([hmm_dosage, prior[:, idx, None].to(hmm_dosage.dtype)], -1)
        x = self._embed(tokens, af, pos, idx, hmm_dosage)
        for block in self.blocks:
            x = block(x, len(obs), nb)
        out = self.head(self.ln_f(x[:, len(obs) :])).squeeze(-1)
        base = hmm_dosage[:, len(obs) :, -1 if self.cfg.use_prior else 0]
        base = torch.logit(base.clamp(1e-4, 1 - 1e-4))
        if parts:
            return base, out
        return base + out * self.correction_scale[self.maf_bins(af[sites])].to(out.dtype)

    @torch.no_grad()
    def predict_sites(
        self,
        tokens: torch.Tensor,
        af: torch.Tensor,
        pos: torch.Tensor,
        neighbours: torch.Tensor | None,
        distances: torch.Tensor | None,
        sites: torch.Tensor,
        chunk: int = 512,
        prior: torch.Tensor | None = None,
        parts: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """ALT probabilities (B, S) at ``sites``, in chunks sharing one prepared window. Exact: a site's
        output does not depend on the other sites asked. ``parts``: the prior's logit and the whole
        correction instead (``forward``)."""
        ctx = self.prepare(tokens, pos, neighbours, distances)
        out = []
        for a in range(0, len(sites), chunk):
            s = sites[a : a + chunk]
            with torch.autocast(
                tokens.device.type, dtype=torch.bfloat16, enabled=tokens.device.type == "cuda"
            ):
                r = self(tokens, af, pos, neighbours, distances, s, ctx, prior=prior, parts=parts)
                out.append(tuple(x.float() for x in r) if parts else torch.sigmoid(r.float()))
        empty = torch.zeros(tokens.shape[0], 0, device=tokens.device)
        if parts:
            bases, corrections = zip(*out, strict=True) if out else ([empty], [empty])
            return torch.cat(bases, 1), torch.cat(corrections, 1)
        return torch.cat(out, 1) if out else empty

    @torch.no_grad()
    def embed(self, tokens: torch.Tensor, af: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, D) window embedding for embedding-space retrieval.

        From the query side only (site embedding and the first block's self-attention over the observed
        sites), mean-pooled, so that reference and query haplotypes are embedded alike before any
        neighbour is known.
        """
        obs = observed_sites(tokens)
        n_rates = len(self.cfg.hmm_switch_rates) if self.cfg.use_retrieval else 1
        n_rates += int(self.cfg.use_prior)  # the prior is not known here: AF stands in for it
        x = self._embed(
            tokens, af, pos, obs, af[obs][None, :, None].expand(tokens.shape[0], -1, n_rates)
        )
        b = self.blocks[0]
        x = x + b.attn(b.ln1(x), len(obs))
        return x.mean(1) if len(obs) else x.new_zeros(tokens.shape[0], self.cfg.d_model)


def masked_loss(
    logits: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy of ALT at the predicted (hidden) sites; ``weight`` (S,) up-weights rare sites."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), truth.float(), reduction="none")
    if weight is None:
        return loss.mean()
    w = weight[None].expand_as(loss)
    return (loss * w).sum() / w.sum().clamp(min=1e-8)
