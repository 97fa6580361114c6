"""Automation conditions: the per-sample and per-tile assets' ``settled_eager``, and ``follows_inputs`` of
cell_labels, the asset that gathers every sample."""

from dagster import AutomationCondition


def _not_newly_missing_and_idle() -> AutomationCondition:
    """False on the first tick an asset (or partition) reads missing and not in progress.

    Dagster's status cache reads an asset's materializations and its runs in progress in two queries. A run
    that materializes it between them makes it read as missing and not in progress for one tick, and a
    condition that requests missing assets requests it again. This was seen in the test suite on a loaded
    machine: the landing run had just made qc_adata of a new sample, and was still running its other steps.
    Each such duplicate brings another cell_labels run, and with it every sample's shards. The next tick reads
    the materialization, so a missing asset waits one tick.
    """
    missing_and_idle = AutomationCondition.missing() & ~AutomationCondition.in_progress()
    return ~missing_and_idle.newly_true()


def follows_inputs() -> AutomationCondition:
    """Dagster's ``eager()``, except that an input's update is handled only by a later request of the asset.

    Under ``eager()`` an input that updates while this asset's run is in flight is forgotten when that run
    materializes (the materialization resets the condition, though the run read its inputs before the
    update). Users drop several bundles at a time, so this happens: a sample whose qc_adata landed while
    cell_labels ran for the others was never labelled. Here such an update brings another run once the
    in-flight one has ended (unless it lands before the first evaluation after the request: Dagster compares
    no times through the dependency condition). Only updates that happened count, and nothing is requested
    on a tick that requests one of the inputs (``eager`` requests both together): the input's update would
    then bring a second run. A missing asset is handled by its materialization, as in ``eager``, one tick
    after it reads missing and idle (see ``_not_newly_missing_and_idle``).
    """
    inputs_updated = AutomationCondition.any_deps_match(
        AutomationCondition.newly_updated() & ~AutomationCondition.executed_with_root_target()
    ).with_label("inputs_updated")
    return (
        AutomationCondition.in_latest_time_window()
        & (
            AutomationCondition.newly_missing().since_last_handled()
            | inputs_updated.since(AutomationCondition.newly_requested() | AutomationCondition.initial_evaluation())
        )
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_match(AutomationCondition.will_be_requested()).with_label("inputs_requested")
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
        & _not_newly_missing_and_idle()
    ).with_label("follows_inputs")


def settled_eager() -> AutomationCondition:
    """Dagster's ``eager()``, except that a partition that turns missing and idle waits one tick before it is
    requested (see ``_not_newly_missing_and_idle``)."""
    return (AutomationCondition.eager() & _not_newly_missing_and_idle()).with_label("settled_eager")
