//! Host-side planning with no device: the index tables a packed batch needs on the GPU,
//! launch geometry, and buffer size classes. Unit-tested without a GPU.

use trident_model::PackedBatch;

/// Queries per attention block (both attention kernels use 64-query tiles).
pub const ATTN_TILE_Q: usize = 64;
/// Rows a warp-per-row kernel handles per 128-thread block.
pub const ROWS_PER_BLOCK: usize = 4;
/// Largest feature count a warp-per-row kernel holds in registers (32 lanes × ROW_VPT).
pub const MAX_ROW_FEATURES: usize = 32 * 32;

/// Every u32 table of a batch, packed back to back so it goes to the device in one copy.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchPlan {
    pub words: Vec<u32>,
    pub n_tokens: usize,
    pub n_seqs: usize,
    /// Attention tile table entries `(sequence, first query token)`, longest sequences first.
    pub n_tiles: usize,
    /// Output rows of the ColBERT head: `Σ (len_i − 1)`.
    pub n_colbert_rows: usize,
    pub max_id: u32,
    pub max_pos: u32,
    pub off: BatchOffsets,
}

/// Offsets (in u32 words) of each table inside `BatchPlan::words`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOffsets {
    pub ids: usize,
    pub positions: usize,
    pub cu_seqlens: usize,
    pub tiles: usize,
    pub tok_seq: usize,
    pub colbert_rows: usize,
}

impl BatchPlan {
    pub fn new(b: &PackedBatch) -> Result<Self, String> {
        let n_tokens = b.n_tokens();
        let n_seqs = b.n_seqs();
        if b.positions.len() != n_tokens {
            return Err(format!("batch has {} positions for {n_tokens} tokens", b.positions.len()));
        }
        if b.cu_seqlens.first() != Some(&0)
            || b.cu_seqlens.last().map(|&x| x as usize) != Some(n_tokens)
        {
            return Err(format!(
                "cu_seqlens must run from 0 to {n_tokens}, got {:?}",
                b.cu_seqlens
            ));
        }
        if u32::try_from(n_tokens).is_err() {
            return Err(format!("batch of {n_tokens} tokens exceeds u32 indexing"));
        }
        let mut tiles = Vec::new();
        let mut tok_seq = Vec::with_capacity(n_tokens);
        let mut colbert_rows = Vec::with_capacity(n_tokens.saturating_sub(n_seqs));
        for s in 0..n_seqs {
            let r = b.seq_range(s);
            if r.is_empty() {
                return Err(format!("sequence {s} of the batch is empty"));
            }
            let mut q = r.start;
            while q < r.end {
                tiles.push((r.len(), s as u32, q as u32));
                q += ATTN_TILE_Q;
            }
            tok_seq.extend(std::iter::repeat_n(s as u32, r.len()));
            colbert_rows.extend((r.start + 1..r.end).map(|t| t as u32));
        }
        // Longest sequences first: their tiles run longest, so the GPU's tail stays short.
        tiles.sort_by_key(|t| std::cmp::Reverse(t.0));
        let mut words =
            Vec::with_capacity(3 * n_tokens + n_seqs + 1 + 2 * tiles.len() + colbert_rows.len());
        let mut push = |v: &[u32]| {
            let at = words.len();
            words.extend_from_slice(v);
            at
        };
        let ids = push(&b.ids);
        let positions = push(&b.positions);
        let cu_seqlens = push(&b.cu_seqlens);
        let flat_tiles: Vec<u32> = tiles.iter().flat_map(|&(_, s, q)| [s, q]).collect();
        let tiles_at = push(&flat_tiles);
        let tok_seq_at = push(&tok_seq);
        let colbert_at = push(&colbert_rows);
        Ok(BatchPlan {
            n_tokens,
            n_seqs,
            n_tiles: tiles.len(),
            n_colbert_rows: colbert_rows.len(),
            max_id: b.ids.iter().copied().max().unwrap_or(0),
            max_pos: b.positions.iter().copied().max().unwrap_or(0),
            off: BatchOffsets {
                ids,
                positions,
                cu_seqlens,
                tiles: tiles_at,
                tok_seq: tok_seq_at,
                colbert_rows: colbert_at,
            },
            words,
        })
    }
}

/// Grid size (in 128-thread blocks) of a warp-per-row kernel over `rows` rows.
pub fn row_blocks(rows: usize) -> u32 {
    rows.div_ceil(ROWS_PER_BLOCK) as u32
}

/// Grid size of a grid-stride elementwise kernel: enough blocks to fill the GPU, never more
/// than the work needs.
pub fn elementwise_blocks(n: usize, threads: usize, sms: usize) -> u32 {
    n.div_ceil(threads).clamp(1, sms.max(1) * 32) as u32
}

/// Size class of a pooled device buffer: powers of two up to 1 MiB, then multiples of 1/8 of
/// the power of two below (so at most 12.5 % is wasted) — batches of similar shape reuse buffers.
pub fn size_class(bytes: usize) -> usize {
    const SMALL: usize = 1 << 20;
    let bytes = bytes.max(256);
    if bytes <= SMALL {
        return bytes.next_power_of_two();
    }
    let step = (bytes.next_power_of_two() / 2) / 8;
    bytes.div_ceil(step) * step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_tables() {
        let lens = [3usize, 130, 1];
        let seqs: Vec<Vec<u32>> =
            lens.iter().map(|&n| (0..n as u32).map(|i| i + 5).collect()).collect();
        let b = PackedBatch::new(&seqs, 1);
        let p = BatchPlan::new(&b).unwrap();
        assert_eq!(p.n_tokens, 134);
        assert_eq!(p.n_seqs, 3);
        // 130 tokens → 3 tiles (64 + 64 + 2), first; then the 3- and 1-token sequences.
        assert_eq!(p.n_tiles, 5);
        let t = &p.words[p.off.tiles..p.off.tiles + 2 * p.n_tiles];
        assert_eq!(t, &[1, 3, 1, 67, 1, 131, 0, 0, 2, 133]);
        assert_eq!(&p.words[p.off.ids..p.off.ids + 134], &b.ids[..]);
        assert_eq!(&p.words[p.off.positions..p.off.positions + 134], &b.positions[..]);
        assert_eq!(&p.words[p.off.cu_seqlens..p.off.cu_seqlens + 4], &[0, 3, 133, 134]);
        let ts = &p.words[p.off.tok_seq..p.off.tok_seq + 134];
        assert_eq!((ts[0], ts[2], ts[3], ts[132], ts[133]), (0, 0, 1, 1, 2));
        // ColBERT rows: tokens 1..len of each sequence; the 1-token sequence has none.
        assert_eq!(p.n_colbert_rows, 2 + 129);
        let cr = &p.words[p.off.colbert_rows..p.off.colbert_rows + p.n_colbert_rows];
        assert_eq!((cr[0], cr[1], cr[2], cr[130]), (1, 2, 4, 132));
        assert_eq!(p.words.len(), p.off.colbert_rows + p.n_colbert_rows);
        assert_eq!(p.max_id, 134);
        assert_eq!(p.max_pos, 131);
    }

    #[test]
    fn plan_rejects_bad_batches() {
        let mut b = PackedBatch::new(&[vec![0u32, 2], vec![0, 2]], 1);
        b.cu_seqlens = vec![0, 2, 2, 4];
        assert!(BatchPlan::new(&b).unwrap_err().contains("empty"));
        b.cu_seqlens = vec![0, 2, 5];
        assert!(BatchPlan::new(&b).is_err());
        let empty = PackedBatch::new::<Vec<u32>>(&[], 1);
        let p = BatchPlan::new(&empty).unwrap();
        assert_eq!((p.n_tokens, p.n_tiles, p.n_colbert_rows), (0, 0, 0));
    }

    #[test]
    fn every_query_is_in_exactly_one_tile() {
        let lens = [1usize, 63, 64, 65, 128, 129, 8192, 7];
        let seqs: Vec<Vec<u32>> = lens.iter().map(|&n| vec![9; n]).collect();
        let b = PackedBatch::new(&seqs, 1);
        let p = BatchPlan::new(&b).unwrap();
        let mut covered = vec![0u8; p.n_tokens];
        for k in 0..p.n_tiles {
            let (s, q) =
                (p.words[p.off.tiles + 2 * k] as usize, p.words[p.off.tiles + 2 * k + 1] as usize);
            let r = b.seq_range(s);
            assert!(r.contains(&q));
            for c in &mut covered[q..(q + ATTN_TILE_Q).min(r.end)] {
                *c += 1;
            }
        }
        assert!(covered.iter().all(|&c| c == 1));
        let want: usize = lens.iter().map(|n| n.div_ceil(ATTN_TILE_Q)).sum();
        assert_eq!(p.n_tiles, want);
    }

    #[test]
    fn launch_geometry() {
        assert_eq!(row_blocks(0), 0);
        assert_eq!(row_blocks(1), 1);
        assert_eq!(row_blocks(4), 1);
        assert_eq!(row_blocks(5), 2);
        assert_eq!(elementwise_blocks(1, 256, 132), 1);
        assert_eq!(elementwise_blocks(1000, 256, 132), 4);
        assert_eq!(elementwise_blocks(1 << 30, 256, 132), 132 * 32);
    }

    #[test]
    fn size_classes_cover_and_bound_waste() {
        assert_eq!(size_class(0), 256);
        assert_eq!(size_class(1000), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        for bytes in [(1 << 20) + 1, 3_000_000, 8192 * 4096 * 2, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && (c - bytes) * 8 <= bytes, "{bytes} -> {c}");
            assert_eq!(size_class(c), c, "a class is its own class");
        }
    }
}
