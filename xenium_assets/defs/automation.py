"""The automation condition of cell_labels, the asset that gathers every sample."""

from dagster import AutomationCondition


def follows_inputs() -> AutomationCondition:
    """Dagster's ``eager()``, except that an input's update is handled only by a later request of the asset.

    Under ``eager()`` an input that updates while this asset's run is in flight is forgotten when that run
    materializes (the materialization resets the condition, though the run read its inputs before the
    update). Users drop several bundles at a time, so this happens: a sample whose qc_adata landed while
    cell_labels ran for the others was never labelled. Here such an update brings another run once the
    in-flight one has ended (unless it lands before the first evaluation after the request: Dagster compares
    no times through the dependency condition). Only updates that happened count, and nothing is requested
    on a tick that requests one of the inputs (``eager`` requests both together): the input's update would
    then bring a second run. A missing asset is handled by its materialization, as in ``eager``.
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
    ).with_label("follows_inputs")
