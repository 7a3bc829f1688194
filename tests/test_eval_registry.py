"""Metric registry: each family file registers its own runners; the table order is by group, then family order."""
import pytest

from dualfashion_jax.evaluators import metrics, registry


def test_every_metric_lives_in_a_listed_family_file():
    families = {m.__name__ for m in metrics.FAMILIES}
    for name, spec in metrics.METRICS.items():
        assert spec.module in families, (name, spec.module)
        assert callable(spec.load()) and spec.load().__name__ == f"run_{name}"
        assert spec.group in registry.GROUPS and set(spec.tasks) <= set(registry.TASKS)
    for task, names in metrics.DEFAULT_METRICS.items():
        assert set(names) <= set(metrics.METRICS), task


def test_table_order_follows_groups_then_families():
    groups = [registry.GROUPS.index(s.group) for s in metrics.METRICS.values()]
    assert groups == sorted(groups)
    assert list(metrics.METRICS)[:8] == ["fid", "fid_ratio", "oracle_fidelity", "inception_score", "clip_score",
                                         "clip_image_score", "lpips", "lpips_diversity"]
    assert list(registry.table(metrics.FAMILIES[::-1])) != list(metrics.METRICS)  # family order decides ties ...
    assert list(registry.table(metrics.FAMILIES)) == list(metrics.METRICS)        # ... not the import order


def test_register_refuses_a_second_name_and_an_unknown_group():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("fid", group="Fidelity", description="again")(lambda ctx: {})
    with pytest.raises(ValueError, match="unknown group"):
        registry.register("new_metric", group="Nope", description="x")
    assert "new_metric" not in registry.table(metrics.FAMILIES)
