"""Declarative automation over a sequence of events, with evaluate_automation_conditions."""

import dagster as dg


def requested(result) -> set[tuple[str, str | None]]:
    """(asset, partition) pairs requested by one evaluation."""
    out = set()
    for r in result.results:
        if result.get_num_requested(r.key) == 0:
            continue
        for partition in result.get_requested_partitions(r.key):
            out.add((r.key.to_user_string(), partition))
    return out


def report(instance, key, partition=None):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))


def test_new_batch_flows_through_its_partition_and_new_encoder_reembeds_all(lensless_home):
    from orchestration.definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # baseline tick: nothing yet
    assert requested(r) == set()
    instance.add_dynamic_partitions("image_batches", ["b1"])
    report(instance, "raw_images", "b1")
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    # the engagement log and the first encoder, in one run (Dagster orders them)
    assert requested(r) == {("engagement_events", None), ("image_encoder", None)}
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    assert requested(r) == set(), "requested once, not again while it runs"

    report(instance, "engagement_events")
    report(instance, "image_encoder")
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    assert ("image_embeddings", "b1") in requested(r)

    report(instance, "image_embeddings", "b1")
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    assert ("faiss_index", None) in requested(r)
    report(instance, "faiss_index")
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)

    # a new batch: only its own partition is embedded
    instance.add_dynamic_partitions("image_batches", ["b2"])
    report(instance, "raw_images", "b2")
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    got = requested(r)
    assert ("image_embeddings", "b2") in got and ("image_embeddings", "b1") not in got
    assert ("image_encoder", None) not in got, "retraining is the sensor's decision, not eager's"
    report(instance, "image_embeddings", "b2")
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    assert ("faiss_index", None) in requested(r)
    report(instance, "faiss_index")
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)

    # a new encoder: every partition is re-embedded
    report(instance, "image_encoder")
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    assert {("image_embeddings", "b1"), ("image_embeddings", "b2")} <= requested(r)

    # nothing new happened: nothing is requested twice
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    assert not any(k == "image_embeddings" for k, _ in requested(r))
