// SPDX-License-Identifier: Apache-2.0
//! Nodes run in lanes side by side, each guest with 1 vCPU (`qemu::set_vcpus`): on CI's 2
//! cores two lanes then finish four nodes in the time each takes alone with 2 vCPUs
//! (testvm/README.md has the figures). Each lane has its own [`Lab`] (registry, pushed images): the
//! blob counts the scenarios read from the registry's log stay per node. The nodes of a lane
//! run one after the other, in the order given.

use std::time::Instant;

use tracing::{error, info, info_span};

use crate::lab::{Lab, Shared};

/// A unit of work a lane runs: one node's life, with its expected duration.
pub trait Job: Sync {
    /// Seconds it took on CI's machine (one lane), to balance the lanes.
    fn expected_secs(&self) -> u32;
    /// Runs it on the lane's lab.
    fn run(&self, lab: &mut Lab) -> Part;
    /// The part to report when the lane could not start (its lab failed).
    fn not_run(&self, e: &anyhow::Error) -> Part;
}

/// What a job reports: the scenario reports and the timings text.
#[derive(Default)]
pub struct Part {
    /// Reports, in the job's order.
    pub reports: Vec<crate::scenarios::report::Report>,
    /// Timings text (bench).
    pub bench: String,
}

/// The lane of each job: longest first, each to the lane with the least work so far.
pub fn assign(expected: &[u32], lanes: usize) -> Vec<usize> {
    let lanes = lanes.max(1);
    let mut order: Vec<usize> = (0..expected.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(expected[i]));
    let mut load = vec![0u64; lanes];
    let mut lane_of = vec![0; expected.len()];
    for i in order {
        let (lane, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(l, w)| (**w, *l))
            .unwrap_or((0, &0));
        load[lane] += u64::from(expected[i]);
        lane_of[i] = lane;
    }
    lane_of
}

/// Runs `jobs` in `lanes` lanes; returns their parts in the jobs' order, and the lanes'
/// setup times.
pub fn run(shared: &Shared, jobs: &[&dyn Job], lanes: usize) -> (Vec<Part>, Vec<(String, f64)>) {
    let lanes = lanes.clamp(1, jobs.len().max(1));
    let lane_of = assign(
        &jobs.iter().map(|j| j.expected_secs()).collect::<Vec<_>>(),
        lanes,
    );
    let mut parts: Vec<Option<Part>> = jobs.iter().map(|_| None).collect();
    let mut setup = vec![];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..lanes)
            .map(|lane| {
                let mine: Vec<usize> = (0..jobs.len()).filter(|&i| lane_of[i] == lane).collect();
                let suffix = if lanes == 1 {
                    String::new()
                } else {
                    format!("-{}", lane + 1)
                };
                s.spawn(move || run_lane(shared, jobs, &mine, &suffix))
            })
            .collect();
        for (lane, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok((done, secs)) => {
                    setup.extend(secs);
                    for (i, p) in done {
                        parts[i] = Some(p);
                    }
                }
                Err(_) => error!("lane {}: the harness panicked", lane + 1),
            }
        }
    });
    let parts = parts
        .into_iter()
        .zip(jobs)
        .map(|(p, j)| {
            p.unwrap_or_else(|| j.not_run(&anyhow::anyhow!("its lane's thread panicked")))
        })
        .collect();
    (parts, setup)
}

type LaneResult = (Vec<(usize, Part)>, Vec<(String, f64)>);

fn run_lane(shared: &Shared, jobs: &[&dyn Job], mine: &[usize], suffix: &str) -> LaneResult {
    let span = info_span!("lane", n = suffix.trim_start_matches('-'));
    let _entered = (!suffix.is_empty()).then(|| span.enter());
    let started = Instant::now();
    let mut lab = match Lab::start(shared, suffix) {
        Ok(l) => l,
        Err(e) => {
            error!("lane{suffix}: {e:#}");
            return (
                mine.iter().map(|&i| (i, jobs[i].not_run(&e))).collect(),
                vec![],
            );
        }
    };
    let done = mine.iter().map(|&i| (i, jobs[i].run(&mut lab))).collect();
    info!(
        "lane{suffix}: {} nodes in {:.0} s",
        mine.len(),
        started.elapsed().as_secs_f64()
    );
    (done, lab.setup_secs.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_jobs_are_spread_first() {
        // 300 and 250 go to different lanes, then each next one to the lighter lane.
        assert_eq!(assign(&[100, 300, 250, 90], 2), [1, 0, 1, 0]);
        assert_eq!(assign(&[5, 5, 5], 1), [0, 0, 0]);
        assert_eq!(assign(&[], 2), Vec::<usize>::new());
    }
}
