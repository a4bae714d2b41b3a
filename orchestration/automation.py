"""Declarative automation: which asset rematerialises when, and the sensor that evaluates it.

Cheap, derived assets are `eager()`: they follow their inputs, partition by partition
(a new batch embeds only its own partition; a new encoder version updates the
unpartitioned parent of every `image_embeddings` partition, so all of them rerun, then
the index and everything after it). Expensive training assets are `train_when_missing`: they
are trained once when their inputs first all exist, and retrained only on purpose — by
`encoder_retrain_sensor`, `reranker_retrain_sensor`, the weekly schedule or a person.
`eager()` already refuses to request an asset while its inputs are in progress or missing,
and `since_last_handled` keeps it from requesting the same partition twice.
"""

from collections.abc import Sequence

import dagster as dg

EAGER = dg.AutomationCondition.eager()
# Built-in on_missing() only fires for partitions that become missing after the condition
# is applied; an unpartitioned model that has never been trained must fire when its inputs
# first all exist. newly_true() makes that a single request, not one per tick.
ON_MISSING = (
    (dg.AutomationCondition.missing() & ~dg.AutomationCondition.any_deps_missing()
     & ~dg.AutomationCondition.any_deps_in_progress()).newly_true()
    & ~dg.AutomationCondition.in_progress()
).with_label("train_when_missing")

# A reranker's inputs live in the encoder's embedding space; the data version of training_pairs
# and user_histories names that space, so a new encoder (and only that, or a person / sensor) retrains the rerankers.
RETRAIN_ON_NEW_SPACE = (
    ON_MISSING
    | (dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
       & ~dg.AutomationCondition.any_deps_in_progress() & ~dg.AutomationCondition.in_progress())
).with_label("train_when_missing_or_new_embedding_space")

CONDITIONS: dict[str, dg.AutomationCondition] = {
    "engagement_events": EAGER,
    "image_encoder": ON_MISSING,
    "image_embeddings": EAGER,
    "faiss_index": EAGER,
    "training_pairs": EAGER,
    "user_histories": EAGER,
    "gutted_reranker": RETRAIN_ON_NEW_SPACE,
    "full_vlm_reranker": RETRAIN_ON_NEW_SPACE,
    "sequential_reranker": RETRAIN_ON_NEW_SPACE,
    "candidates": EAGER,
    "reranked_candidates": EAGER,
    "evaluation_report": EAGER,
    "reranker_champion": EAGER,
}


def with_automation(assets: Sequence) -> Sequence:
    """Attach `CONDITIONS` to the matching asset specs (raw_images is driven by its sensor)."""
    def attach(spec: dg.AssetSpec) -> dg.AssetSpec:
        condition = CONDITIONS.get(spec.key.to_user_string())
        return spec.replace_attributes(automation_condition=condition) if condition else spec

    return dg.map_asset_specs(attach, assets)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "lensless_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates every asset's automation condition (orchestration/automation.py).",
)
