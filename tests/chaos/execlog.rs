//! Reads the execution logs the replicas append to (see `src/bin/step-worker-chaos.rs`) and
//! counts what the result table cannot show: duplicate executions, overlapping executions, and
//! how long a killed worker's jobs waited before running again.

use std::collections::HashMap;
use std::path::Path;

use crate::cluster::Gone;

#[derive(Debug, Clone)]
pub struct Exec {
    pub job: String,
    pub attempt: u32,
    pub pid: u32,
    pub start_us: u128,
    /// `None`: the process died during the execution.
    pub end_us: Option<u128>,
}

#[derive(Debug, Default)]
pub struct ExecLog {
    pub execs: Vec<Exec>,
}

impl ExecLog {
    pub fn read(dir: &Path) -> Self {
        let mut execs: Vec<Exec> = Vec::new();
        // (job, attempt, pid) -> indexes of executions still waiting for their end line.
        let mut open: HashMap<(String, u32, u32), Vec<usize>> = HashMap::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("exec-")))
            .collect();
        files.sort();
        for f in files {
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                let parts: Vec<&str> = line.split(' ').collect();
                if parts.len() < 5 {
                    continue; // a line cut by the crash it records
                }
                let (job, attempt, pid, at) = (
                    parts[1].to_owned(),
                    parts[2].parse().unwrap(),
                    parts[3].parse().unwrap(),
                    parts[4].parse().unwrap(),
                );
                match parts[0] {
                    "S" => {
                        open.entry((job.clone(), attempt, pid)).or_default().push(execs.len());
                        execs.push(Exec {
                            job,
                            attempt,
                            pid,
                            start_us: at,
                            end_us: None,
                        });
                    }
                    "E" => {
                        if let Some(waiting) = open.get_mut(&(job, attempt, pid))
                            && !waiting.is_empty()
                        {
                            let i = waiting.remove(0);
                            execs[i].end_us = Some(at);
                        }
                    }
                    _ => {}
                }
            }
        }
        ExecLog { execs }
    }

    /// Executions beyond one per (job, attempt): the same attempt run again.
    pub fn duplicates(&self) -> usize {
        let mut distinct = std::collections::HashSet::new();
        for e in &self.execs {
            distinct.insert((&e.job, e.attempt));
        }
        self.execs.len() - distinct.len()
    }

    pub fn starts_of(&self, job: &str) -> usize {
        self.execs.iter().filter(|e| e.job == job).count()
    }

    /// Pairs of executions of one job whose intervals intersect. An execution cut by a crash ends
    /// when the suite saw its process dead (`gone`), which can only overstate overlaps; one with
    /// no known end (a process still alive) is left out.
    pub fn overlaps(&self, gone: &[Gone], only_jobs: Option<&dyn Fn(&str) -> bool>) -> Vec<(Exec, Exec)> {
        let dead_at: HashMap<u32, u128> = gone.iter().map(|g| (g.pid, g.dead_at_us)).collect();
        let mut by_job: HashMap<&str, Vec<(u128, u128, &Exec)>> = HashMap::new();
        for e in &self.execs {
            if only_jobs.is_some_and(|f| !f(&e.job)) {
                continue;
            }
            let Some(end) = e.end_us.or_else(|| dead_at.get(&e.pid).copied()) else {
                continue;
            };
            by_job.entry(&e.job).or_default().push((e.start_us, end, e));
        }
        let mut out = Vec::new();
        for (_, mut list) in by_job {
            if list.len() < 2 {
                continue;
            }
            list.sort_by_key(|x| x.0);
            for i in 0..list.len() {
                for j in i + 1..list.len() {
                    if list[j].0 < list[i].1 {
                        out.push((list[i].2.clone(), list[j].2.clone()));
                    }
                }
            }
        }
        out
    }

    /// For one killed process: the longest wait from its death until each job it was running
    /// started again elsewhere (µs), and the jobs that never did.
    pub fn recovery(&self, killed: &Gone) -> (Option<u128>, Vec<String>) {
        let mut worst: Option<u128> = None;
        let mut never = Vec::new();
        for e in self.execs.iter().filter(|e| e.pid == killed.pid && e.end_us.is_none()) {
            let rerun = self
                .execs
                .iter()
                .filter(|r| r.job == e.job && r.pid != killed.pid && r.start_us >= e.start_us)
                .map(|r| r.start_us)
                .min();
            match rerun {
                Some(at) => {
                    let wait = at.saturating_sub(killed.dead_at_us);
                    worst = Some(worst.map_or(wait, |w| w.max(wait)));
                }
                None => never.push(e.job.clone()),
            }
        }
        (worst, never)
    }
}
