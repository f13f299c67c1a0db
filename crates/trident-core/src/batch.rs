//! The batching policy: length buckets, a token budget per batch, a max batch size and a max
//! wait after which a partial batch goes anyway.
//!
//! Pure and clock-free: callers pass `now`. Records of similar length share a bucket so a
//! padded backend wastes little; a packed backend (the CPU and CUDA backends pack) costs the real
//! token count. Online (interactive) records have their own queues, a shorter wait, and leave
//! before stream records.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Who is waiting for a record: a person (HTTP) or a stream. Online batches leave first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Priority {
    Online,
    Stream,
}

impl Priority {
    fn index(self) -> usize {
        match self {
            Priority::Online => 0,
            Priority::Stream => 1,
        }
    }
}

/// The knobs of the batcher. Every field has a laptop-friendly default.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchPolicy {
    /// Inclusive upper token lengths of the buckets, ascending; longer records share one last bucket.
    pub bucket_edges: Vec<usize>,
    /// Token budget of one batch (see `padded`). A single record longer than the budget goes alone.
    pub batch_tokens: usize,
    /// Most records in one batch.
    pub max_batch: usize,
    /// How long a stream record may wait for its batch to fill.
    pub max_wait: Duration,
    /// How long an online record may wait for its batch to fill.
    pub online_max_wait: Duration,
    /// True when the backend pads every sequence to the longest in the batch (cost = longest ×
    /// count); false when it packs (cost = sum of lengths).
    pub padded: bool,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            bucket_edges: vec![16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
            batch_tokens: 16384,
            max_batch: 256,
            max_wait: Duration::from_millis(20),
            online_max_wait: Duration::from_millis(2),
            padded: false,
        }
    }
}

impl BatchPolicy {
    /// Bucket index of a record of `tokens` tokens.
    pub fn bucket(&self, tokens: usize) -> usize {
        self.bucket_edges.partition_point(|&edge| edge < tokens)
    }

    /// Cost against the budget of a batch with this longest record, token sum and count.
    pub fn cost(&self, longest: usize, sum: usize, count: usize) -> usize {
        if self.padded {
            longest * count
        } else {
            sum
        }
    }

    fn wait(&self, p: Priority) -> Duration {
        match p {
            Priority::Online => self.online_max_wait,
            Priority::Stream => self.max_wait,
        }
    }
}

/// A closed batch, ready for a worker.
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<T>,
    /// Real tokens (sum of lengths).
    pub tokens: usize,
    /// Cost against the budget (equals `tokens` when packed; longest × count when padded).
    pub cost: usize,
    pub priority: Priority,
}

impl<T> Batch<T> {
    /// Real tokens ÷ cost: how much of the work is useful (1.0 when packed).
    pub fn fill_ratio(&self) -> f64 {
        if self.cost == 0 {
            1.0
        } else {
            self.tokens as f64 / self.cost as f64
        }
    }
}

struct Queue<T> {
    items: VecDeque<(T, usize)>,
    sum: usize,
    longest: usize,
    oldest: Option<Instant>,
}

impl<T> Queue<T> {
    fn new() -> Self {
        Queue { items: VecDeque::new(), sum: 0, longest: 0, oldest: None }
    }
}

/// Length-bucketed batch builder. Push records; closed batches wait in a ready queue
/// (online first, then FIFO) until `pop_ready`.
pub struct Batcher<T> {
    policy: BatchPolicy,
    /// `queues[bucket][priority]`.
    queues: Vec<[Queue<T>; 2]>,
    ready: [VecDeque<Batch<T>>; 2],
    pending: usize,
}

impl<T> Batcher<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        let n = policy.bucket_edges.len() + 1;
        let queues = (0..n).map(|_| [Queue::new(), Queue::new()]).collect();
        Batcher { policy, queues, ready: [VecDeque::new(), VecDeque::new()], pending: 0 }
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Add a record of `tokens` tokens. Closes its bucket's batch first if the record would push
    /// it over the budget or the max size, and after, if the batch is then full.
    pub fn push(&mut self, item: T, tokens: usize, priority: Priority, now: Instant) {
        let b = self.policy.bucket(tokens);
        let p = priority.index();
        let (sum, longest, count) = {
            let q = &self.queues[b][p];
            (q.sum, q.longest, q.items.len())
        };
        if count > 0 {
            let cost = self.policy.cost(longest.max(tokens), sum + tokens, count + 1);
            if cost > self.policy.batch_tokens || count + 1 > self.policy.max_batch {
                self.close(b, priority);
            }
        }
        let q = &mut self.queues[b][p];
        q.items.push_back((item, tokens));
        q.sum += tokens;
        q.longest = q.longest.max(tokens);
        q.oldest.get_or_insert(now);
        self.pending += 1;
        let (sum, longest, count) = (q.sum, q.longest, q.items.len());
        if self.policy.cost(longest, sum, count) >= self.policy.batch_tokens
            || count >= self.policy.max_batch
        {
            self.close(b, priority);
        }
    }

    /// Close every partial batch whose oldest record has waited its max wait by `now`.
    pub fn expire(&mut self, now: Instant) {
        for b in 0..self.queues.len() {
            for priority in [Priority::Online, Priority::Stream] {
                let q = &self.queues[b][priority.index()];
                if let Some(t) = q.oldest {
                    if t + self.policy.wait(priority) <= now {
                        self.close(b, priority);
                    }
                }
            }
        }
    }

    /// When the next partial batch expires, if any record waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        for qs in &self.queues {
            for priority in [Priority::Online, Priority::Stream] {
                if let Some(t) = qs[priority.index()].oldest {
                    let d = t + self.policy.wait(priority);
                    best = Some(best.map_or(d, |b| b.min(d)));
                }
            }
        }
        best
    }

    /// Close every partial batch now (end of input, shutdown).
    pub fn flush(&mut self) {
        for b in 0..self.queues.len() {
            self.close(b, Priority::Online);
            self.close(b, Priority::Stream);
        }
    }

    /// The next closed batch: online before stream, oldest first.
    pub fn pop_ready(&mut self) -> Option<Batch<T>> {
        let batch = self.ready[0].pop_front().or_else(|| self.ready[1].pop_front())?;
        self.pending -= batch.items.len();
        Some(batch)
    }

    /// Put a batch back at the front of the ready queue (a retry after a worker failure).
    pub fn requeue_front(&mut self, batch: Batch<T>) {
        self.pending += batch.items.len();
        self.ready[batch.priority.index()].push_front(batch);
    }

    /// Records pushed and not yet popped (partial plus ready).
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn has_ready(&self) -> bool {
        !self.ready[0].is_empty() || !self.ready[1].is_empty()
    }

    fn close(&mut self, bucket: usize, priority: Priority) {
        let q = &mut self.queues[bucket][priority.index()];
        if q.items.is_empty() {
            return;
        }
        let count = q.items.len();
        let cost = self.policy.cost(q.longest, q.sum, count);
        let items = q.items.drain(..).map(|(t, _)| t).collect();
        let batch = Batch { items, tokens: q.sum, cost, priority };
        *q = Queue::new();
        self.ready[priority.index()].push_back(batch);
    }
}

/// Split a batch's records in two halves (isolating a poison record after repeated failures).
pub fn split_batch<T>(
    batch: Batch<T>,
    tokens_of: impl Fn(&T) -> usize,
    policy: &BatchPolicy,
) -> [Batch<T>; 2] {
    let mut items = batch.items;
    let right = items.split_off(items.len() / 2);
    let mk = |items: Vec<T>| {
        let sum: usize = items.iter().map(&tokens_of).sum();
        let longest = items.iter().map(&tokens_of).max().unwrap_or(0);
        let cost = policy.cost(longest, sum, items.len());
        Batch { items, tokens: sum, cost, priority: batch.priority }
    };
    [mk(items), mk(right)]
}

/// Offline packing (a benchmark's, or any job that holds its whole input): document indices
/// sorted longest first and packed greedily; a batch closes when the next document would take
/// it past `budget` real tokens (a longer document gets a batch alone).
pub fn pack_by_length(lens: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for i in order {
        match batches.last_mut() {
            Some(b) if used + lens[i] <= budget => b.push(i),
            _ => {
                batches.push(vec![i]);
                used = 0;
            }
        }
        used += lens[i];
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_packing_sorts_by_length_and_respects_the_budget() {
        let b = pack_by_length(&[3, 10, 4, 8, 1], 12);
        assert_eq!(b, vec![vec![1], vec![3, 2], vec![0, 4]]);
        // A document over the budget is alone in its batch.
        assert_eq!(pack_by_length(&[20, 2], 10), vec![vec![0], vec![1]]);
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 5);
    }
    use proptest::prelude::*;

    fn policy(padded: bool) -> BatchPolicy {
        BatchPolicy {
            bucket_edges: vec![8, 32, 128],
            batch_tokens: 200,
            max_batch: 16,
            max_wait: Duration::from_millis(20),
            online_max_wait: Duration::from_millis(2),
            padded,
        }
    }

    #[test]
    fn buckets_are_inclusive_upper_edges() {
        let p = policy(false);
        assert_eq!(p.bucket(1), 0);
        assert_eq!(p.bucket(8), 0);
        assert_eq!(p.bucket(9), 1);
        assert_eq!(p.bucket(128), 2);
        assert_eq!(p.bucket(10_000), 3);
    }

    #[test]
    fn full_batch_closes_at_budget_and_online_goes_first() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy(false));
        for i in 0..5 {
            b.push(i, 100, Priority::Stream, t0); // bucket 2; two per batch
        }
        b.push(99, 5, Priority::Online, t0);
        assert!(b.has_ready());
        let first = b.pop_ready().unwrap();
        assert_eq!(first.items, vec![0, 1]);
        b.expire(t0 + Duration::from_millis(2));
        assert_eq!(b.pop_ready().unwrap().items, vec![99], "online expired batch leaves first");
        assert_eq!(b.pop_ready().unwrap().items, vec![2, 3]);
        assert!(b.pop_ready().is_none());
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(20)));
        b.flush();
        assert_eq!(b.pop_ready().unwrap().items, vec![4]);
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn padded_cost_uses_longest() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy(true));
        b.push(0, 40, Priority::Stream, t0);
        b.push(1, 100, Priority::Stream, t0); // 100 * 2 = 200 = budget: closes
        let batch = b.pop_ready().unwrap();
        assert_eq!(batch.cost, 200);
        assert_eq!(batch.tokens, 140);
        assert!((batch.fill_ratio() - 0.7).abs() < 1e-9);
    }

    #[test]
    fn split_halves_keep_every_record() {
        let p = policy(false);
        let batch =
            Batch { items: vec![3usize, 4, 5], tokens: 12, cost: 12, priority: Priority::Stream };
        let [a, b] = split_batch(batch, |&x| x, &p);
        assert_eq!(a.items, vec![3]);
        assert_eq!(b.items, vec![4, 5]);
        assert_eq!(b.tokens, 9);
    }

    proptest! {
        /// Every record is batched exactly once; no batch of more than one record exceeds its
        /// budget or the max size; a batch holds one bucket and one priority; and no record waits
        /// past its max wait when the caller expires at each deadline.
        #[test]
        fn batching_properties(
            padded in any::<bool>(),
            ops in proptest::collection::vec((1usize..300, any::<bool>(), 0u64..8), 1..300),
        ) {
            let p = policy(padded);
            let t0 = Instant::now();
            let mut b = Batcher::new(p.clone());
            let mut now = t0;
            let mut info = Vec::new(); // (tokens, priority, pushed at)
            let mut seen = vec![0u32; ops.len()];
            let mut check = |batch: Batch<usize>, at: Instant, info: &Vec<(usize, Priority, Instant)>| {
                prop_assert!(batch.items.len() <= p.max_batch);
                if batch.items.len() > 1 {
                    prop_assert!(batch.cost <= p.batch_tokens, "cost {} > budget", batch.cost);
                }
                let bucket = p.bucket(info[batch.items[0]].0);
                for &i in &batch.items {
                    seen[i] += 1;
                    let (tok, pr, pushed) = info[i];
                    prop_assert_eq!(p.bucket(tok), bucket);
                    prop_assert_eq!(pr, batch.priority);
                    prop_assert!(at.duration_since(pushed) <= p.wait(pr));
                }
                Ok(())
            };
            for (i, &(tokens, online, advance_ms)) in ops.iter().enumerate() {
                let target = now + Duration::from_millis(advance_ms);
                while let Some(d) = b.next_deadline().filter(|d| *d <= target) {
                    b.expire(d);
                    while let Some(batch) = b.pop_ready() { check(batch, d, &info)?; }
                }
                now = target;
                let pr = if online { Priority::Online } else { Priority::Stream };
                info.push((tokens, pr, now));
                b.push(i, tokens, pr, now);
                while let Some(batch) = b.pop_ready() { check(batch, now, &info)?; }
            }
            b.flush();
            while let Some(batch) = b.pop_ready() { check(batch, now, &info)?; }
            prop_assert!(seen.iter().all(|&n| n == 1), "counts {:?}", seen);
            prop_assert_eq!(b.pending(), 0);
        }
    }
}
