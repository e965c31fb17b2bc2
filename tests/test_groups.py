"""Groups and their irreps: representations, orthogonality, Plancherel, templates, name parsing."""

import numpy as np
import pytest

from configs import UserError
from small_tasks.composition import groups

NAMES = ["C5", "C3xC4", "D4", "D5", "S3", "S4", "S5", "C2xD3"]


@pytest.mark.parametrize("name", NAMES)
def test_irreps_are_unitary_inequivalent_and_complete(name):
    g = groups.parse_group(name)
    n = g.order
    assert sorted(g.table[0]) == list(range(n)) and (g.table[0] == np.arange(n)).all()  # 0 is the identity
    for r in g.irreps:
        m = r.matrices
        np.testing.assert_allclose(m[g.table], np.einsum("aij,bjk->abik", m, m), atol=1e-10)  # homomorphism
        np.testing.assert_allclose(
            np.einsum("gji,gjk->gik", m.conj(), m), np.broadcast_to(np.eye(r.dim), m.shape), atol=1e-10
        )
    assert sum(r.dim**2 for r in g.irreps) == n
    chars = np.stack([r.character for r in g.irreps])
    np.testing.assert_allclose(chars.conj() @ chars.T / n, np.eye(len(g.irreps)), atol=1e-10)  # irreducible, distinct


def test_symmetric_group_dimensions_follow_partitions():
    assert [r.dim for r in groups.parse_group("S4").irreps] == [1, 3, 2, 3, 1]
    assert [r.dim for r in groups.parse_group("S5").irreps] == [1, 4, 5, 6, 5, 4, 1]
    s3 = groups.parse_group("S3")
    assert s3.table[1, 2] != s3.table[2, 1]  # non-abelian


@pytest.mark.parametrize("name", ["C11", "D5", "S4", "C3xC4"])
def test_plancherel_shift_and_composition(name):
    g = groups.parse_group(name)
    x = np.random.default_rng(0).standard_normal(g.order)
    np.testing.assert_allclose(groups.power_spectrum(g, x).sum(), x @ x)
    elems = np.arange(g.order)
    shifted = groups.shift(g, x, elems)
    for r, xh, sh in zip(g.irreps, groups.fourier(g, x), groups.fourier(g, shifted)):
        np.testing.assert_allclose(sh, np.einsum("gij,jk->gik", r.matrices, xh), atol=1e-9)  # x_g_hat = rho(g) x_hat
    seqs = groups.sequences(g, 3)
    prod = groups.compose(g, seqs)
    expect = g.table[g.table[seqs[:, 0], seqs[:, 1]], seqs[:, 2]]
    assert (prod == expect).all() and len(seqs) == g.order**3


def test_cyclic_composition_is_addition():
    g = groups.cyclic(7)
    seqs = groups.sequences(g, 2)
    assert (groups.compose(g, seqs) == seqs.sum(1) % 7).all()


@pytest.mark.parametrize("name", ["C11", "D5", "S4", "C3xC4"])
def test_templates_have_the_requested_power(name):
    g = groups.parse_group(name)
    powers = groups.default_powers(g)
    x = groups.template_from_powers(g, powers, seed=3)
    np.testing.assert_allclose(groups.power_spectrum(g, x), powers, atol=1e-9)
    onehot = groups.onehot_template(g)
    np.testing.assert_allclose(groups.power_spectrum(g, onehot)[1:], [r.dim**2 / g.order for r in g.irreps[1:]])


def test_default_template_for_c11_is_the_reference():
    assert groups.default_powers(groups.cyclic(11)) == [0, 12.5, 10, 7.5, 5, 2.5, 2.5, 5, 7.5, 10, 12.5]


def test_template_errors_name_the_fix():
    g = groups.cyclic(5)
    with pytest.raises(UserError, match="one power per irrep"):
        groups.template_from_powers(g, [0, 1, 2])
    with pytest.raises(UserError, match="equal powers"):
        groups.template_from_powers(g, [0, 1, 2, 2, 3])


@pytest.mark.parametrize("bad", ["Q7", "S6", "D2", "C11xZ2", ""])
def test_bad_group_names(bad):
    with pytest.raises(UserError):
        groups.parse_group(bad)
