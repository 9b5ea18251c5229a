//! Timed loops and the interleaved-round median.

use std::time::{Duration, Instant};

/// Interleaved rounds per figure; the median is reported.
pub const ROUNDS: usize = 15;

/// Calls per round of the single-instruction runners when
/// `ASSIST_BENCH_ITERATIONS` is not set: low enough that the few hundred
/// rows (every form in every mode, three runners each) take well under a
/// minute, high enough that one round of a row lasts about a millisecond.
const DEFAULT_ITERATIONS: u32 = 20_000;

/// Calls per round; `ASSIST_BENCH_ITERATIONS` overrides it.
pub fn iterations() -> u32 {
    std::env::var("ASSIST_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS)
        .max(1)
}

/// A timed loop: runs the operation `n` times and returns the time taken.
pub type Runner = Box<dyn FnMut(u32) -> Duration>;

/// Wraps one operation in a monomorphic timed loop.
pub fn runner(mut f: impl FnMut() + 'static) -> Runner {
    Box::new(move |n| {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed()
    })
}

/// A labelled runner and the calls it makes per round.
pub struct Timed {
    pub label: String,
    pub run: Runner,
    pub calls: u32,
}

/// ns per call of each runner: after a warm-up, [`ROUNDS`] rounds in which
/// each runner runs its calls in turn; the median round of each is kept.
/// With `ASSIST_BENCH_ONLY` set, runners whose label lacks it are skipped
/// (their figure is NaN).
pub fn measure(timed: &mut [Timed]) -> Vec<f64> {
    let only = std::env::var("ASSIST_BENCH_ONLY").ok();
    let wanted = |t: &Timed| only.as_deref().is_none_or(|o| t.label.contains(o));
    for t in timed.iter_mut().filter(|t| wanted(t)) {
        (t.run)((t.calls / 10).max(1));
    }
    let mut rounds: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); timed.len()];
    for _ in 0..ROUNDS {
        for (r, t) in rounds.iter_mut().zip(timed.iter_mut()) {
            if wanted(t) {
                r.push((t.run)(t.calls));
            }
        }
    }
    rounds
        .iter_mut()
        .zip(timed.iter())
        .map(|(r, t)| {
            if r.is_empty() {
                return f64::NAN;
            }
            r.sort();
            r[r.len() / 2].as_nanos() as f64 / f64::from(t.calls)
        })
        .collect()
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}
