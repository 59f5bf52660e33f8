from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mochi_runtime.validation import GenerationRequest, Limits, RequestError, validate

GOOD = GenerationRequest("a fox in snow", num_frames=13, height=64, width=96, steps=4, guidance=4.5, seed=1)


@pytest.mark.parametrize(
    "field,value,rule",
    [
        ("num_frames", 8, "6k+1"), ("num_frames", 1, "6k+1"), ("num_frames", 169, "at most"),
        ("num_frames", 7.5, "integer"), ("height", 50, "multiple of 16"), ("width", 0, "multiple of 16"),
        ("width", -16, "multiple of 16"), ("height", 4800, "pixels"), ("steps", 0, "between"),
        ("steps", 10_000, "between"), ("guidance", math.nan, "finite"), ("guidance", math.inf, "finite"),
        ("guidance", 0.5, "between"), ("seed", -1, "between"), ("seed", 2**64, "between"),
        ("prompt", "", "empty"), ("prompt", "   ", "empty"), ("prompt", "x" * 5000, "bytes"),
        ("prompt", b"\xff\xfe", "UTF-8"), ("prompt", 3, "string"), ("negative_prompt", "y" * 5000, "bytes"),
        ("prompt", "a\x00b", "NUL"), ("steps", True, "bool"),
    ],
)
def test_bad_field_is_named(field, value, rule):
    with pytest.raises(RequestError) as e:
        validate(GOOD.with_(**{field: value}))
    assert e.value.field == field or (field == "height" and e.value.field == "height")
    assert rule in str(e.value) and str(e.value).startswith(e.value.field)


def test_good_request_passes_and_normalises():
    out = validate(GOOD.with_(prompt=b"caf\xc3\xa9", guidance=3))
    assert out.prompt == "café" and out.guidance == 3.0 and isinstance(out.guidance, float)
    assert out.latent_shape == (1, 12, 3, 8, 12)


@settings(max_examples=300, deadline=None)
@given(
    frames=st.integers(-10, 400), h=st.integers(-64, 2000), w=st.integers(-64, 2000), steps=st.integers(-5, 300),
    g=st.floats(allow_nan=True, allow_infinity=True), seed=st.integers(-(2**64), 2**64),
    prompt=st.one_of(st.text(max_size=50), st.binary(max_size=50)),
)
def test_fuzz_validator_never_crashes_and_never_accepts_invalid(frames, h, w, steps, g, seed, prompt):
    limits = Limits()
    req = GenerationRequest(prompt, "", frames, h, w, steps, g, seed)
    try:
        out = validate(req, limits)
    except RequestError:
        return
    assert out.num_frames >= 7 and (out.num_frames - 1) % 6 == 0 and out.num_frames <= limits.max_frames
    assert out.height > 0 and out.height % 16 == 0 and out.width > 0 and out.width % 16 == 0
    assert out.height * out.width <= limits.max_pixels
    assert 1 <= out.steps <= limits.max_steps
    assert math.isfinite(out.guidance) and 1 <= out.guidance <= 20
    assert 0 <= out.seed < 2**63 and out.prompt.strip()
