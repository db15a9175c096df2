//! What every model file shares: how a model is run under its bounds.

/// Runs `model` under loom with at most `preemptions` preemptions and
/// `max_branches` branches per execution: the bounds CI checks. The environment
/// overrides them (`LOOM_MAX_PREEMPTIONS`, `LOOM_MAX_BRANCHES`, which
/// `loom::model::Builder::new` reads), so a model can be checked deeper by hand, for
/// example `LOOM_MAX_PREEMPTIONS=4 cargo test ... --test lfmutex two_lockers`.
/// (Setting the fields unconditionally, as the models did before, silently ignored
/// those variables.)
pub fn check_bounded(
    preemptions: usize,
    max_branches: usize,
    model: impl Fn() + Sync + Send + 'static,
) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = max_branches;
    }
    builder.check(model);
}
