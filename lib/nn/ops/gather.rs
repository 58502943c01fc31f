//! The im2col gather of the convolutions, with the inverse index of its scatter-add.

use std::sync::OnceLock;

/// A row gather: out[m] = x[index[m]] for a source of `source_rows` rows, a zero row where
/// index[m] >= source_rows; with the inverse index its backward needs no atomics.
#[derive(Debug)]
pub struct RowGather {
    index: Vec<u32>,
    source_rows: usize,
    /// The outputs that read source row r: `readers[starts[r]..starts[r + 1]]`, ascending.
    starts: Vec<usize>,
    readers: Vec<u32>,
    /// Maximal runs of the index that copy one block: entries `run_starts[k]..run_starts[k +
    /// 1]` read consecutive source rows (or are all zero rows). A 3 x 3 patch is three runs of
    /// three rows away from the border, so a patch costs three copies, not nine.
    run_starts: Vec<u32>,
    /// The adjoint gather of patches of some number of taps ([`RowGather::adjoint`]), built on
    /// first use: (taps, the gather where it serves).
    adjoint: OnceLock<(usize, Option<Box<RowGather>>)>,
}

impl RowGather {
    /// The gather of `index` (entries >= `source_rows` read zeros) and its inverse.
    pub fn new(index: Vec<u32>, source_rows: usize) -> RowGather {
        let mut starts = vec![0usize; source_rows + 1];
        for &i in &index {
            if (i as usize) < source_rows {
                starts[i as usize + 1] += 1;
            }
        }
        for r in 0..source_rows {
            starts[r + 1] += starts[r];
        }
        let mut next = starts.clone();
        let mut readers = vec![0u32; starts[source_rows]];
        for (m, &i) in index.iter().enumerate() {
            if (i as usize) < source_rows {
                readers[next[i as usize]] = m as u32;
                next[i as usize] += 1;
            }
        }
        let run_starts = runs(&index, source_rows);
        RowGather {
            index,
            source_rows,
            starts,
            readers,
            run_starts,
            adjoint: OnceLock::new(),
        }
    }

    /// For patches of `taps` entries (output row m's taps at `m taps..(m + 1) taps`), the
    /// gather whose patch of source row r holds, at slot s, the output row that reads r at tap
    /// `taps - 1 - s` (zero where none does): the patches of the input gradient in the layout
    /// of a convolution with the kernel flipped, so that dx = (these patches of dy) (the
    /// flipped weights) is one product with an inner dimension of taps x O. Slots run through
    /// the taps backwards so that a 3 x 3 patch again reads three runs of three rows. None
    /// where a source row is read twice at one tap (an upsampling convolution) or where most
    /// slots would be zero (a strided one: the product would mostly multiply zeros).
    pub fn adjoint(&self, taps: usize) -> Option<&RowGather> {
        let (built_for, adjoint) = self
            .adjoint
            .get_or_init(|| (taps, self.build_adjoint(taps)));
        match *built_for == taps {
            true => adjoint.as_deref(),
            false => None,
        }
    }

    fn build_adjoint(&self, taps: usize) -> Option<Box<RowGather>> {
        if taps == 0 || !self.index.len().is_multiple_of(taps) {
            return None;
        }
        let m = self.index.len() / taps;
        let none = m as u32;
        let mut index = vec![none; self.source_rows * taps];
        let mut read = 0usize;
        for (q, &r) in self.index.iter().enumerate() {
            if (r as usize) < self.source_rows {
                let slot = &mut index[r as usize * taps + taps - 1 - q % taps];
                if *slot != none {
                    return None;
                }
                *slot = (q / taps) as u32;
                read += 1;
            }
        }
        (4 * read >= 3 * index.len()).then(|| Box::new(RowGather::new(index, m)))
    }

    /// The number of output rows.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The number of source rows.
    pub fn source_rows(&self) -> usize {
        self.source_rows
    }

    /// Output rows `first..first + count` gathered from `x` (source rows of `c` values), zeros
    /// for the rows past the source: one copy per run of consecutive source rows.
    pub fn patches(&self, x: &[f32], c: usize, first: usize, count: usize) -> Vec<f32> {
        let end = first + count;
        let mut out = Vec::with_capacity(count * c);
        let mut run = self.run_starts.partition_point(|&s| s as usize <= first) - 1;
        let mut q = first;
        while q < end {
            let run_end = (self.run_starts[run + 1] as usize).min(end);
            let i = self.index[q] as usize;
            let rows = run_end - q;
            if i < self.source_rows {
                out.extend_from_slice(&x[i * c..(i + rows) * c]);
            } else {
                out.resize(out.len() + rows * c, 0.0);
            }
            q = run_end;
            run += 1;
        }
        out
    }

    /// The output rows that read source row `r`, ascending.
    pub fn readers_of(&self, r: usize) -> impl Iterator<Item = usize> + '_ {
        self.readers[self.starts[r]..self.starts[r + 1]]
            .iter()
            .map(|&q| q as usize)
    }

    /// The first and the last output row that read any of the source rows `first..first +
    /// count`; None when no output row reads them.
    pub fn reader_span(&self, first: usize, count: usize) -> Option<(usize, usize)> {
        (first..first + count)
            .filter(|&r| self.starts[r] < self.starts[r + 1])
            .map(|r| {
                (
                    self.readers[self.starts[r]] as usize,
                    self.readers[self.starts[r + 1] - 1] as usize,
                )
            })
            .reduce(|(lo, hi), (a, b)| (lo.min(a), hi.max(b)))
    }
}

/// The starts of the maximal runs of `index` whose entries read consecutive source rows, or
/// are all past the source (zero rows), with `index.len()` appended.
fn runs(index: &[u32], source_rows: usize) -> Vec<u32> {
    let past = |i: u32| i as usize >= source_rows;
    let mut starts = vec![0u32];
    for q in 1..index.len() {
        let (a, b) = (index[q - 1], index[q]);
        let continues = if past(a) {
            past(b)
        } else {
            !past(b) && b == a + 1
        };
        if !continues {
            starts.push(q as u32);
        }
    }
    starts.push(index.len() as u32);
    starts
}

#[cfg(test)]
mod tests {
    use super::*;
    /// Patches copied by runs equal the entry-by-entry gather for every window, with runs of
    /// consecutive rows, zero rows, repeats and descents in the index.
    #[test]
    fn patches_by_runs_match_the_entry_by_entry_gather() {
        let (r, c) = (10, 3);
        let index: Vec<u32> = vec![0, 1, 2, 12, 11, 3, 4, 4, 5, 9, 8, 10, 10, 6, 7, 8, 9];
        let x: Vec<f32> = (0..r * c).map(|i| i as f32 + 0.5).collect();
        let gather = RowGather::new(index.clone(), r);
        for first in 0..=index.len() {
            for count in 0..=index.len() - first {
                let expected: Vec<f32> = index[first..first + count]
                    .iter()
                    .flat_map(|&i| match (i as usize) < r {
                        true => x[i as usize * c..(i as usize + 1) * c].to_vec(),
                        false => vec![0.0; c],
                    })
                    .collect();
                assert_eq!(
                    gather.patches(&x, c, first, count),
                    expected,
                    "{first} {count}"
                );
            }
        }
        assert_eq!(gather.run_starts, [0, 3, 5, 7, 9, 10, 11, 13, 17]);
    }

    /// The adjoint of a 1-D "same" convolution's gather (3 taps over 5 rows): source row r's
    /// slots hold the output rows that read it at taps 2, 1, 0; none where a row is read
    /// twice at one tap or where most slots would be empty.
    #[test]
    fn adjoint_lists_the_readers_of_each_source_row_by_flipped_tap() {
        let (rows, taps) = (5u32, 3u32);
        let index: Vec<u32> = (0..rows * taps)
            .map(|q| match (q / taps + q % taps).checked_sub(1) {
                Some(r) if r < rows => r,
                _ => rows,
            })
            .collect();
        let gather = RowGather::new(index, rows as usize);
        let adjoint = gather
            .adjoint(3)
            .expect("a same convolution has an adjoint");
        let none = 5;
        #[rustfmt::skip]
        let want = [none, 0, 1, 0, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4, none];
        assert_eq!(adjoint.index, want);
        assert_eq!(adjoint.source_rows(), 5);
        assert!(gather.adjoint(2).is_none(), "built for 3 taps");
        // Row 0 read twice at tap 0.
        let twice = RowGather::new(vec![0, 1, 0, 2], 3);
        assert!(twice.adjoint(2).is_none());
        // Every source row read at one tap of two: half the slots empty.
        let sparse = RowGather::new(vec![0, 4, 1, 4, 2, 4, 3, 4], 4);
        assert!(sparse.adjoint(2).is_none());
    }
}
