"""Finite groups with their irreducible representations, Fourier transform, power spectrum and templates.

A group is a multiplication table over element indices (identity = 0) plus its irreps, each given by
its matrices for every element. Names: ``C11``, ``C4xC4`` (any product of named groups), ``D5``
(order 10), ``S3`` (n <= 5).

Irrep order (the order of ``--task.powers``):
- ``Cn``: frequency j = 0..n-1, rho_j(r^a) = exp(2*pi*i*j*a/n).
- products ``G x H``: pairs (i, j) in row-major order, rho = rho_i (x) rho_j.
- ``Dn``: the 1-dim irreps (trivial; r->1, s->-1; for even n also r->-1, s->+-1), then the 2-dim
  rotation irreps j = 1..floor((n-1)/2).
- ``Sn``: partitions in reverse lexicographic order, from [n] (trivial) to [1^n] (sign), each in
  Young's orthogonal form (real orthogonal matrices).

Fourier convention: x_hat(rho) = sum_g x(g) rho(g); power P(rho) = d_rho * ||x_hat(rho)||_F^2 / |G|, so
sum_rho P(rho) = ||x||^2 (Plancherel). A template shifted by g, x_g(h) = x(g^-1 h), has
x_g_hat(rho) = rho(g) x_hat(rho): the same power, which is why the loss splits per irrep.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np

from configs import UserError


@dataclass
class Irrep:
    name: str
    matrices: np.ndarray  # (|G|, d, d) complex

    @property
    def dim(self) -> int:
        return self.matrices.shape[1]

    @property
    def character(self) -> np.ndarray:
        return np.trace(self.matrices, axis1=1, axis2=2)


@dataclass
class Group:
    name: str
    labels: list[str]
    table: np.ndarray  # table[a, b] = index of a*b
    irreps: list[Irrep] = field(default_factory=list)

    @property
    def order(self) -> int:
        return len(self.labels)

    @property
    def inverse(self) -> np.ndarray:
        return np.argmax(self.table == 0, axis=1)

    def conjugate_of(self) -> list[int]:
        """Index of each irrep's complex conjugate (itself for real-character irreps)."""
        chars = [r.character for r in self.irreps]
        out = []
        for c in chars:
            out.append(next(j for j, c2 in enumerate(chars) if np.allclose(np.conj(c), c2, atol=1e-8)))
        return out

    def classes(self) -> list[list[int]]:
        """Irreps grouped with their conjugates: a real template has one power per class."""
        conj, seen, out = self.conjugate_of(), set(), []
        for i, j in enumerate(conj):
            if i not in seen:
                out.append(sorted({i, j}))
                seen |= {i, j}
        return out

    def class_basis(self) -> tuple[np.ndarray, np.ndarray]:
        """An orthonormal basis of R^|G| (columns) in which each column lies in one class's subspace, and
        the class of each column: x's share in class c is the squared norm of its coordinates there."""
        q = self.projectors()
        cols, owner = [], []
        for c, cls in enumerate(self.classes()):
            vals, vecs = np.linalg.eigh(q[cls].sum(axis=0))
            keep = vecs[:, vals > 0.5]
            cols.append(keep)
            owner += [c] * keep.shape[1]
        return np.concatenate(cols, axis=1), np.array(owner)

    def projectors(self) -> np.ndarray:
        """Real symmetric (R, |G|, |G|) matrices Q with P_rho(x) = x^T Q_rho x for real x."""
        n = self.order
        out = []
        for r in self.irreps:
            m = r.matrices.reshape(n, -1)
            out.append((r.dim / n) * np.real(np.conj(m) @ m.T))
        return np.stack(out)


# --------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------


def _closure(generators: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], list[tuple[int, int]]]:
    """All permutations generated, in BFS order from the identity, and how each was reached."""
    n = len(generators[0])
    identity = tuple(range(n))
    elems, index, parent = [identity], {identity: 0}, [(-1, -1)]
    i = 0
    while i < len(elems):
        for gi, s in enumerate(generators):
            h = tuple(s[elems[i][x]] for x in range(n))  # s composed after elems[i]
            if h not in index:
                index[h] = len(elems)
                elems.append(h)
                parent.append((gi, i))
        i += 1
    return elems, parent


def _from_generators(name: str, gens: list[tuple[int, ...]], labels_fn=None) -> tuple[Group, list]:
    elems, parent = _closure(gens)
    index = {e: i for i, e in enumerate(elems)}
    n = len(elems[0])
    table = np.array([[index[tuple(a[b[x]] for x in range(n))] for b in elems] for a in elems])
    labels = [labels_fn(e) if labels_fn else str(e) for e in elems]
    return Group(name, labels, table), parent


def _irrep_from_generators(name: str, parent: list, gen_mats: list[np.ndarray]) -> Irrep:
    d = gen_mats[0].shape[0]
    mats = np.zeros((len(parent), d, d), dtype=complex)
    mats[0] = np.eye(d)
    for i, (gi, pi) in enumerate(parent[1:], start=1):
        mats[i] = gen_mats[gi] @ mats[pi]
    return Irrep(name, mats)


def cyclic(n: int) -> Group:
    if n < 1:
        raise UserError(f"cyclic group order must be >= 1, got {n}; use e.g. C11")
    table = (np.arange(n)[:, None] + np.arange(n)[None, :]) % n
    a = np.arange(n)
    irreps = [Irrep(f"f{j}", np.exp(2j * np.pi * j * a / n)[:, None, None]) for j in range(n)]
    return Group(f"C{n}", [str(i) for i in range(n)], table, irreps)


def product(g: Group, h: Group) -> Group:
    ng, nh = g.order, h.order
    table = (g.table[:, None, :, None] * nh + h.table[None, :, None, :]).reshape(ng * nh, ng * nh)
    labels = [f"({a},{b})" for a in g.labels for b in h.labels]
    irreps = []
    for rg in g.irreps:
        for rh in h.irreps:
            mats = np.einsum("aij,bkl->abikjl", rg.matrices, rh.matrices)
            d = rg.dim * rh.dim
            irreps.append(Irrep(f"{rg.name}x{rh.name}", mats.reshape(ng * nh, d, d)))
    return Group(f"{g.name}x{h.name}", labels, table, irreps)


def dihedral(n: int) -> Group:
    """Symmetries of the regular n-gon, order 2n, as permutations of its vertices."""
    if n < 3:
        raise UserError(f"dihedral group needs n >= 3, got D{n}; use e.g. D5")
    r = tuple((i + 1) % n for i in range(n))
    s = tuple((-i) % n for i in range(n))
    group, parent = _from_generators(f"D{n}", [r, s])
    ones = [("trivial", 1, 1), ("sign_s", 1, -1)]
    if n % 2 == 0:
        ones += [("sign_r", -1, 1), ("sign_rs", -1, -1)]
    irreps = [_irrep_from_generators(nm, parent, [np.eye(1) * a, np.eye(1) * b]) for nm, a, b in ones]
    for j in range(1, (n - 1) // 2 + 1):
        t = 2 * np.pi * j / n
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        irreps.append(_irrep_from_generators(f"rot{j}", parent, [rot, np.diag([1.0, -1.0])]))
    group.irreps = irreps
    group.labels = _dihedral_labels(group, n)
    return group


def _dihedral_labels(group: Group, n: int) -> list[str]:
    rot = next(r.matrices for r in group.irreps if r.name == "rot1")
    labels = []
    for m in rot:
        a = round(np.angle(m[0, 0] + 1j * m[1, 0]) / (2 * np.pi / n)) % n
        labels.append(f"r{a}" if np.real(np.linalg.det(m)) > 0 else f"r{a}s")
    return labels


def partitions(n: int, largest: int | None = None) -> list[tuple[int, ...]]:
    """Partitions of n in reverse lexicographic order: (n), (n-1, 1), ..., (1, ..., 1)."""
    largest = n if largest is None else largest
    if n == 0:
        return [()]
    return [(m, *rest) for m in range(min(n, largest), 0, -1) for rest in partitions(n - m, m)]


def standard_tableaux(shape: tuple[int, ...]) -> list[dict[int, tuple[int, int]]]:
    """Standard Young tableaux of ``shape``, each as {number: (row, column)}, numbers 1..n."""
    n = sum(shape)
    out = []

    def grow(t: dict, rows: list[int]) -> None:
        m = len(t) + 1
        if m > n:
            out.append(dict(t))
            return
        for r in range(len(shape)):
            if rows[r] < shape[r] and (r == 0 or rows[r - 1] > rows[r]):
                t[m] = (r, rows[r])
                rows[r] += 1
                grow(t, rows)
                rows[r] -= 1
                del t[m]

    grow({}, [0] * len(shape))
    return out


def _young_orthogonal(shape: tuple[int, ...], i: int) -> np.ndarray:
    """Young's orthogonal form of the adjacent transposition (i, i+1) in the irrep ``shape``."""
    tabs = standard_tableaux(shape)
    key = {tuple(sorted(t.items())): a for a, t in enumerate(tabs)}
    m = np.zeros((len(tabs), len(tabs)))
    for a, t in enumerate(tabs):
        (r1, c1), (r2, c2) = t[i], t[i + 1]
        if r1 == r2:
            m[a, a] = 1.0
        elif c1 == c2:
            m[a, a] = -1.0
        else:
            inv_axial = 1.0 / ((c2 - r2) - (c1 - r1))
            swapped = dict(t)
            swapped[i], swapped[i + 1] = t[i + 1], t[i]
            b = key[tuple(sorted(swapped.items()))]
            m[a, a] = inv_axial
            m[b, a] = np.sqrt(1.0 - inv_axial**2)
    return m


def symmetric(n: int) -> Group:
    if not 2 <= n <= 5:
        raise UserError(f"symmetric groups are supported for 2 <= n <= 5, got S{n}; use S3, S4 or S5")
    gens = [tuple(list(range(i)) + [i + 1, i] + list(range(i + 2, n))) for i in range(n - 1)]
    group, parent = _from_generators(f"S{n}", gens, lambda e: "".join(str(x + 1) for x in e))
    group.irreps = [
        _irrep_from_generators(
            "[" + ",".join(map(str, lam)) + "]",
            parent,
            [_young_orthogonal(lam, i + 1).astype(complex) for i in range(n - 1)],
        )
        for lam in partitions(n)
    ]
    return group


_FACTOR = re.compile(r"^([CDS])(\d+)$")


def parse_group(name: str) -> Group:
    """``C11``, ``D5``, ``S3``, ``C4xC4`` (factors joined by x or ×)."""
    parts = [p.strip() for p in re.split(r"[x×]", name)]
    groups = []
    for p in parts:
        m = _FACTOR.match(p)
        if not m:
            raise UserError(f"cannot read group '{name}'; write Cn, Dn, Sn or products like C4xC4")
        kind, n = m.group(1), int(m.group(2))
        groups.append({"C": cyclic, "D": dihedral, "S": symmetric}[kind](n))
    out = groups[0]
    for g in groups[1:]:
        out = product(out, g)
    return out


# --------------------------------------------------------------------------------------------
# Fourier analysis and templates
# --------------------------------------------------------------------------------------------


def fourier(group: Group, x: np.ndarray) -> list[np.ndarray]:
    """x_hat(rho) = sum_g x(g) rho(g) for each irrep; ``x`` is (|G|,) or (B, |G|)."""
    return [np.einsum("...g,gij->...ij", x, r.matrices) for r in group.irreps]


def power_spectrum(group: Group, x: np.ndarray) -> np.ndarray:
    """Power per irrep, P(rho) = d * ||x_hat(rho)||_F^2 / |G|; sums to ||x||^2."""
    hats = fourier(group, x)
    return np.stack(
        [r.dim * np.sum(np.abs(xh) ** 2, axis=(-1, -2)) / group.order for r, xh in zip(group.irreps, hats)], -1
    )


def default_powers(group: Group) -> list[float]:
    """Trivial irrep 0; the j-th of m non-trivial classes (a conjugate pair counts once) 2.5*(m+1-j).

    For C11 this is the reference spectrum [0, 12.5, 10, 7.5, 5, 2.5, 2.5, 5, 7.5, 10, 12.5].
    """
    classes = [c for c in group.classes() if c != [0]]
    powers = [0.0] * len(group.irreps)
    for j, cls in enumerate(classes, start=1):
        for i in cls:
            powers[i] = 2.5 * (len(classes) + 1 - j)
    return powers


def template_from_powers(group: Group, powers: list[float], seed: int = 0, phase: str = "random") -> np.ndarray:
    """A real template with the given power per irrep and x_hat(rho) = c_rho * U_rho, c_rho = sqrt(P |G|) / d.

    ``phase="random"``: U_rho a seeded random unitary (a random phase, for a 1-dim irrep); ``"zero"``:
    U_rho = I, the reference code's template (a sum of characters, so x(g) = x(g^-1)). Equal singular
    values make each irrep one block for the network to learn (a 2-dim irrep's Fourier coefficient with
    unequal singular values would be learned in two pieces). The phases change nothing in distribution
    over initializations: x_hat -> x_hat U commutes with the shifts, so it is an orthogonal change of
    coordinates that an isotropic Gaussian initialization does not see.
    """
    if phase not in ("random", "zero"):
        raise UserError(f"unknown task.phase '{phase}'; use random or zero")
    if len(powers) != len(group.irreps):
        raise UserError(
            f"task.powers has {len(powers)} entries but {group.name} has {len(group.irreps)} irreps "
            f"({', '.join(r.name for r in group.irreps)}); give one power per irrep, or [] for the default"
        )
    if any(p < 0 for p in powers):
        raise UserError("task.powers must be non-negative; fix the negative entries")
    rng = np.random.default_rng(seed)
    conj = group.conjugate_of()
    hats: dict[int, np.ndarray] = {}
    for i, r in enumerate(group.irreps):
        if powers[i] != powers[conj[i]]:
            names = f"{r.name} and {group.irreps[conj[i]].name}"
            raise UserError(f"conjugate irreps {names} need equal powers for a real template; make them equal")
        if conj[i] in hats:  # the conjugate's coefficient, conjugated, keeps x real
            hats[i] = np.conj(hats[conj[i]])
            continue
        z = rng.standard_normal((r.dim, r.dim)) + (1j * rng.standard_normal((r.dim, r.dim)) if conj[i] != i else 0)
        q = np.linalg.qr(z)[0] if phase == "random" else np.eye(r.dim)
        hats[i] = np.sqrt(powers[i] * group.order) / r.dim * q
    # inverse transform: x(g) = (1/|G|) sum_rho d_rho Tr(rho(g)^H x_hat(rho))
    x = sum(r.dim * np.einsum("gji,ji->g", np.conj(r.matrices), hats[i]) for i, r in enumerate(group.irreps))
    x = np.real(x) / group.order
    if not np.allclose(power_spectrum(group, x), powers, rtol=1e-6, atol=1e-9):
        raise UserError(f"cannot build a real template with these powers on {group.name}; use task.template=onehot")
    return x


def onehot_template(group: Group) -> np.ndarray:
    """The identity's indicator, mean-centred: a flat spectrum P(rho) = d_rho^2 / |G| off the trivial irrep."""
    x = -np.ones(group.order) / group.order
    x[0] += 1.0
    return x


def shift(group: Group, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """x_g(h) = x(g^-1 h) for each g in ``g``: (len(g), |G|)."""
    return x[group.table[group.inverse[g]]]


def sequences(group: Group, k: int) -> np.ndarray:
    """All |G|^k sequences of k elements, (|G|^k, k)."""
    return np.array(list(itertools.product(range(group.order), repeat=k)), dtype=np.int64)


def compose(group: Group, seqs: np.ndarray) -> np.ndarray:
    """The product g1 g2 ... gk of each sequence."""
    out = seqs[:, 0]
    for j in range(1, seqs.shape[1]):
        out = group.table[out, seqs[:, j]]
    return out
