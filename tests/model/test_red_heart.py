from __future__ import annotations

import pytest
import torch

from model import EMBEDDED_TASKS, PRESETS, ByteTokenizer, GroupSpec, TaskSpec, build_model


def test_730m_preset_is_within_3_percent_of_730m_parameters_on_meta():
    model = build_model("730m", device="meta")
    params = list(model.parameters())
    assert all(p.is_meta for p in params)  # nothing allocated
    n = sum(p.numel() for p in params)
    assert abs(n - 730_000_000) / 730_000_000 < 0.03, n


def test_presets_grow_in_size():
    sizes = [sum(p.numel() for p in build_model(k, device="meta").parameters())
             for k in ("tiny", "small", "base", "730m")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_parameter_and_buffer_belongs_to_exactly_one_group(preset):
    model = build_model(preset, device="meta")
    spec = model.group_spec
    parts = spec.partition(model)
    names = [n for group in parts.values() for n in group]
    assert sorted(names) == sorted(model.state_dict())  # each exactly once
    assert set(parts) == {"group_a_backbone_heads", "group_b_neural", "group_c_dsp_kalman",
                          "advanced_emotion", "advanced_intent", "advanced_subject"}
    assert all(parts.values())  # no empty group


def test_overlapping_groups_are_an_error():
    model = build_model("tiny", device="meta")
    spec = GroupSpec(groups={"a": ("backbone.",), "b": ("backbone.embedding.",),
                             "rest": ("heads.", "neural.", "dsp.", "kalman.", "advanced.")})
    with pytest.raises(ValueError, match="exactly one group"):
        spec.partition(model)


def test_every_module_predicts_and_fusion_covers_every_task():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    ids, mask = ByteTokenizer(64).encode_batch(["(◕‿◕)", "ヽ(ˇ∀ˇ )ゞ", "안녕"])
    out = model(ids, mask)
    assert set(out) == {"fused", "heads", "neural", "dsp", "advanced_emotion",
                        "advanced_intent", "advanced_subject"}
    for task in EMBEDDED_TASKS:
        for module in ("fused", "heads", "neural", "dsp", f"advanced_{task.name}"):
            assert out[module][task.name].shape == (3, task.num_outputs)


def test_fusion_weights_are_the_softmax_of_negative_log_variances():
    torch.manual_seed(0)
    model = build_model("tiny", tasks=[TaskSpec("y", "single", 3)]).eval()
    with torch.no_grad():
        model.kalman.log_var["y"].copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    ids, mask = ByteTokenizer(64).encode_batch(["abc"])
    out = model(ids, mask)
    w = torch.softmax(-torch.tensor([0.0, 1.0, 2.0, 3.0]), 0)
    expected = sum(wi * out[m]["y"] for wi, m in zip(w, ["heads", "neural", "dsp", "advanced_y"],
                                                       strict=True))
    torch.testing.assert_close(out["fused"]["y"], expected)


def test_padding_length_does_not_change_predictions():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    short_ids, short_mask = ByteTokenizer(64).encode_batch(["(^_^)"])
    long_ids, long_mask = ByteTokenizer(64).encode_batch(["(^_^)", "a much longer text here"])
    a, b = model(short_ids, short_mask), model(long_ids, long_mask)
    for module in a:
        for task in a[module]:
            torch.testing.assert_close(a[module][task][0], b[module][task][0],
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    ({"d_model": 65}, "divisible by n_heads"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"dsp_bins": 100}, "dsp_bins must be in"),
    ({"n_layers": 0}, "n_layers must be >= 1"),
])
def test_bad_config_values_are_quoted_in_the_error(bad, message):
    with pytest.raises(ValueError, match=message):
        build_model("tiny", device="meta", **bad)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_model("huge")


def test_ngram_preset_is_in_the_strategys_regime_of_many_parameters_per_training_row():
    n = sum(p.numel() for p in build_model("ngram", device="meta").parameters())
    assert n / 7_264 > 500, n  # the default 10,000-row sample leaves 7,264 training rows


def test_ngram_hashes_count_characters_not_bytes_and_ignore_position():
    from model.red_heart import ngram_hashes

    tok = ByteTokenizer(64)
    ids, mask = tok.encode_batch(["(╯°□°)", "x(╯°□°)"])
    h = ngram_hashes(ids, mask, 3)                     # (2, W, 3)
    chars = [1 + 6 + 1, 1 + 7 + 1]                     # CLS + characters + end, not UTF-8 bytes
    for row, n_chars in enumerate(chars):
        valid = h[row] >= 0
        assert int(valid[:, 0].sum()) == n_chars
        assert int(valid.sum()) == sum(max(0, n_chars - n + 1) for n in (1, 2, 3))
    # "(╯°" starts at character 1 of the first text and character 2 of the second.
    assert h[0, 1, 2] == h[1, 2, 2]
    assert h[0, 1, 0] != h[0, 1, 1]  # a 1-gram and a 2-gram land apart


def test_ngram_hashes_mark_where_a_text_ends():
    from model.red_heart import ngram_hashes

    tok = ByteTokenizer(64)
    ids, mask = tok.encode_batch(["(^_^)", "(^_^)x"])
    h = ngram_hashes(ids, mask, 2)                     # (2, W, 2)
    # ")" is character 5 in both; the 2-gram starting there is ")<end>" in the first
    # text and ")x" in the second, and the end marker is a 1-gram of its own.
    assert h[0, 5, 0] == h[1, 5, 0]
    assert h[0, 5, 1] != h[1, 5, 1]
    assert h[0, 6, 0] >= 0 and h[0, 6, 0] != h[1, 6, 0]
    assert h[0, 6, 1] == -1  # nothing follows the end marker


def test_ngram_model_output_does_not_depend_on_padding():
    model = build_model("ngram", dropout=0.0).eval()
    tok = ByteTokenizer(64)
    alone_ids, alone_mask = tok.encode_batch(["(^_^)"])
    ids, mask = tok.encode_batch(["(^_^)", "a much longer text than the first one"])
    with torch.no_grad():
        alone, both = model(alone_ids, alone_mask), model(ids, mask)
    for task, pred in alone["fused"].items():
        assert torch.allclose(pred[0], both["fused"][task][0], atol=1e-5)


@pytest.mark.parametrize("preset", ["ngram", "tiny"])
def test_copies_equal_the_repeated_batch_with_the_same_dropout_draws(preset):
    """forward(ids, mask, copies=2) is R-Drop's (2B, L) pass: the same outputs (each copy
    with its own dropout masks, drawn in the same order) and the same gradients, while the
    n-gram backbone looks its n-grams up once."""
    tok = ByteTokenizer(64)
    ids, mask = tok.encode_batch(["(^_^)", "orz", "a longer line of text ＼(◎o◎)／", "x"])
    models = []
    outputs = []
    for copies in (1, 2):
        torch.manual_seed(0)
        model = build_model(preset, EMBEDDED_TASKS, dropout=0.3)
        model.train()
        torch.manual_seed(1)
        out = (model(ids.repeat(2, 1), mask.repeat(2, 1)) if copies == 1
               else model(ids, mask, copies=2))
        sum(v.sum() for module in out.values() for v in module.values()).backward()
        models.append(model)
        outputs.append(out)
    for module, tasks in outputs[0].items():
        for task, value in tasks.items():
            assert value.shape[0] == 8
            torch.testing.assert_close(outputs[1][module][task], value, msg=f"{module}.{task}")
    two = dict(models[1].named_parameters())
    for name, p in models[0].named_parameters():
        if p.grad is None:
            assert two[name].grad is None, name
            continue
        torch.testing.assert_close(two[name].grad.to_dense(), p.grad.to_dense(), msg=name,
                                   rtol=1e-4, atol=1e-5)
    # The two copies differ: each drew its own dropout masks.
    fused = outputs[1]["fused"][EMBEDDED_TASKS[0].name]
    assert not torch.equal(fused[:4], fused[4:])
