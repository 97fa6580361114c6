"""Automation conditions: ``settled_eager`` of the per-sample and per-tile assets, and ``built_when_missing`` of
label_reference, the one asset that gathers samples and is rebuilt only when a user asks."""

from dagster import AutomationCondition


def _not_newly_missing_and_idle() -> AutomationCondition:
    """False on the first tick an asset (or partition) reads missing and not in progress.

    Dagster's status cache reads an asset's materializations and its runs in progress in two queries. A run
    that materializes it between them makes it read as missing and not in progress for one tick, and a
    condition that requests missing assets requests it again. This was seen in the test suite on a loaded
    machine: the landing run had just made qc_adata of a new sample, and was still running its other steps.
    Each such duplicate brings another run of everything downstream. The next tick reads the materialization,
    so a missing asset waits one tick.
    """
    missing_and_idle = AutomationCondition.missing() & ~AutomationCondition.in_progress()
    return ~missing_and_idle.newly_true()


def built_when_missing() -> AutomationCondition:
    """Requested only while missing: once an input has been updated (or it turned missing) since it was last
    requested, and no input is in flight (so that samples landing together are all in it).

    For label_reference: its classes are rebuilt when a user asks (the launchpad, ``xenium-assets reference``),
    not each time a sample lands, which would relabel every sample. A missing one (a new project, or one wiped)
    is built, or no sample would ever be labelled.
    """
    return (
        AutomationCondition.missing()
        & (AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()).since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
        & _not_newly_missing_and_idle()
    ).with_label("built_when_missing")


def settled_eager() -> AutomationCondition:
    """Dagster's ``eager()``, except that a partition that turns missing and idle waits one tick before it is
    requested (see ``_not_newly_missing_and_idle``)."""
    return (AutomationCondition.eager() & _not_newly_missing_and_idle()).with_label("settled_eager")
