"""What a run started from the command line wrote and how its checks went, a line each."""

from __future__ import annotations

QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def summarise(result, label: str) -> list[str]:
    """What a run wrote and its checks, a line each. A failed asset raises RuntimeError; a failed check (e.g. a
    model no better than chance) is reported, not raised."""
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    checks = result.get_asset_check_evaluations()
    check_steps = {f"{c.asset_key.to_python_identifier()}_{c.check_name}" for c in checks}
    broken = [e for e in failures if e.step_key not in check_steps]
    if broken:
        raise RuntimeError(f"{label}: {broken[0].step_key} failed: {broken[0].step_failure_data.error.message}")
    # A partitioned asset's run materializes many partitions: its sample-level folder, where given, says more
    # than the first partition's.
    paths: dict[str, str] = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        name = mat.asset_key.to_user_string()
        for key in ("sample_path", "path"):
            if key in mat.metadata and (key == "sample_path" or name not in paths):
                paths[name] = mat.metadata[key].value
                break
        paths.setdefault(name, "")
    lines = [f"{label} {name}: {path}" for name, path in paths.items()]
    for check in checks:
        lines.append(f"{label} check {check.check_name}: {'passed' if check.passed else 'FAILED'}")
    return lines
