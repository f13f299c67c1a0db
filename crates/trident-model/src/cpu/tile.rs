//! The f32 micro-tile's shape, shared by the portable/AVX2 kernel (one tile) and the AVX-512
//! kernel (two panels of each operand per 12 × 32 tile).

/// Rows of a tile (`A` micro-panel width).
pub const MR: usize = 6;
/// Columns of a tile (`B` micro-panel width: two 8-lane vectors).
pub const NR: usize = 16;
