"""RNN studies: each runs in its tiny configuration; verdicts follow the numbers."""

import jax
import jax.numpy as jnp
import pytest

from jdl import studies
from jdl.studies import rnn
from jdl.studies.registry import CAVEAT, FAILS, HOLDS
from study_checks import well_formed

IDS = ["rnn.bptt", "rnn.h0", "rnn.lstm-memory", "rnn.lstm-gates"]


@pytest.mark.parametrize("study_id", IDS)
def test_runs_tiny(study_id, ctx):
    finding = studies.load_all()[study_id].fn(ctx)
    well_formed(finding, ctx)


def test_bptt_needs_the_recurrent_term(ctx):
    finding = rnn.bptt(ctx)
    assert finding.verdict == HOLDS
    truncated = rnn.bptt(ctx, recurrent_term=False)
    assert truncated.verdict == FAILS
    assert truncated.numbers["two_step_relative_error"] > 1e-3
    assert truncated.numbers["max_relative_error"] > 1e-3


def test_h0_is_not_forgotten_by_a_saturated_rnn(ctx):
    finding = rnn.initial_state(ctx)
    ratios = finding.numbers["distance_ratio_per_step"]
    assert ratios[-1] < 0.5 and finding.numbers["monotone"]
    chaotic = rnn.initial_state(ctx, recurrent_scale=3.0)   # same trained models, w_h x 3
    assert chaotic.numbers["distance_ratio_per_step"][-1] > 0.5
    assert finding.verdict in (HOLDS, CAVEAT) and chaotic.verdict != finding.verdict
    assert chaotic.verdict == (CAVEAT if finding.verdict == HOLDS else FAILS)


def test_lstm_memory_fails_with_its_forget_gate_shut(ctx):
    finding = rnn.lstm_memory(ctx)
    assert finding.verdict in (HOLDS, CAVEAT)
    norms = finding.numbers["final_gradient_norm"]
    assert norms["lstm_init"] > 10 * norms["rnn_init"]
    shut = rnn.lstm_memory(ctx, forget_bias=-10.0)
    assert shut.verdict == FAILS
    assert shut.numbers["final_gradient_norm"]["lstm_init"] < norms["rnn_init"]


def _cell_without_forget_gate(params, carry, x_t):
    """c_t = c_(t-1) + i g: the memory always passes whole (no forget gate)."""
    h, c = carry
    z = x_t @ params["w_x"] + h @ params["w_h"] + params["b"]
    z_i, _, z_g, z_o = jnp.split(z, 4, axis=-1)
    c = c + jax.nn.sigmoid(z_i) * jnp.tanh(z_g)
    h = jax.nn.sigmoid(z_o) * jnp.tanh(c)
    return (h, c), h


def test_lstm_gates_fail_for_a_cell_without_forget_gate(ctx):
    finding = rnn.lstm_gates(ctx)
    assert finding.verdict == HOLDS
    assert finding.numbers["max_output_gate_effect_on_c"] == 0.0
    other = rnn.lstm_gates(ctx, cell=_cell_without_forget_gate)
    assert other.verdict == FAILS
    assert other.numbers["relative_error_dc_dc_prev_vs_diag_f"] > 1e-3
