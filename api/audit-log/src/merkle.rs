//! The Merkle tree of the audit log, exactly as RFC 6962 section 2.1 and RFC 9162
//! section 2.1 define it.
//!
//! Following the RFCs to the letter (rather than inventing a tree shape) means any
//! off-the-shelf transparency-log verifier can check our proofs, and the published
//! certificate-transparency test vectors apply to us unchanged.
//!
//! - Leaf hash: `SHA-256(0x00 || data)`; interior node: `SHA-256(0x01 || left || right)`.
//!   The distinct prefixes give second-preimage resistance: a leaf can never be passed
//!   off as an interior node (RFC 6962 section 2.1, RFC 9162 section 2.1.1).
//! - Empty tree: `SHA-256("")`.
//! - A tree of `n > 1` leaves splits at `k`, the largest power of two smaller than `n`.
//!
//! Everything here is pure computation over hashes: no I/O, no clocks.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Domain-separation prefix of a leaf hash (RFC 6962 section 2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 6962 section 2.1).
const NODE_PREFIX: u8 = 0x01;

/// A SHA-256 digest: a leaf hash, a node hash or a tree root.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for Hash {
    fn from(bytes: [u8; 32]) -> Self {
        Hash(bytes)
    }
}

impl fmt::Display for Hash {
    /// Lower-case hex, the way the RFCs' test vectors and most tooling print hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

/// Why a proof could not be generated or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is out of range for a tree of size {size}")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size it was checked against.
        size: u64,
    },
    /// A consistency proof was asked for between a larger and a smaller tree.
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    OldSizeTooLarge {
        /// The claimed earlier tree size.
        old_size: u64,
        /// The claimed later tree size.
        new_size: u64,
    },
    /// The proof has the wrong number of hashes for the given index and sizes.
    #[error("proof has {actual} hashes, but {expected} are needed for these sizes")]
    WrongProofLength {
        /// The length these sizes require.
        expected: usize,
        /// The length that was supplied.
        actual: usize,
    },
    /// The inclusion proof leads to a different root than the one given.
    #[error("inclusion proof leads to root {computed}, not the expected root {expected}")]
    RootMismatch {
        /// The root recomputed from the leaf and the proof.
        computed: Hash,
        /// The root the caller expected.
        expected: Hash,
    },
    /// The consistency proof does not reproduce the old root.
    #[error("consistency proof leads to old root {computed}, not the expected {expected}")]
    OldRootMismatch {
        /// The old root recomputed from the proof.
        computed: Hash,
        /// The old root the caller expected.
        expected: Hash,
    },
    /// The consistency proof does not reproduce the new root.
    #[error("consistency proof leads to new root {computed}, not the expected {expected}")]
    NewRootMismatch {
        /// The new root recomputed from the proof.
        computed: Hash,
        /// The new root the caller expected.
        expected: Hash,
    },
    /// Two trees of the same size have different roots: they are not the same log.
    #[error("trees of the same size {size} have different roots {old_root} and {new_root}")]
    SameSizeDifferentRoots {
        /// The common tree size.
        size: u64,
        /// The root given for the old tree.
        old_root: Hash,
        /// The root given for the new tree.
        new_root: Hash,
    },
}

/// `SHA-256(0x00 || data)` (RFC 6962 section 2.1).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    Hash(h.finalize().into())
}

/// `SHA-256(0x01 || left || right)` (RFC 6962 section 2.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The root of the empty tree, `SHA-256("")` (RFC 6962 section 2.1: `MTH({}) = SHA-256()`).
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// An append-only Merkle tree that keeps only its "frontier": the roots of the perfect
/// subtrees that the tree of the current size decomposes into, one per set bit of the
/// size, largest (leftmost) first. That is at most `log2(n) + 1` hashes, so an append
/// is O(log n) hashing (amortised O(1)) and no leaf is stored.
///
/// The frontier is exactly what RFC 6962's MTH needs: for `n` leaves the left subtree is
/// the perfect tree of the largest power of two below `n`, which is the frontier's first
/// entry, and the right subtree recurses on the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactTree {
    size: u64,
    /// Perfect-subtree roots, biggest first; entry `i` covers `2^b` leaves where `b` is
    /// the `i`-th highest set bit of `size`.
    frontier: Vec<Hash>,
}

impl CompactTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one leaf hash (already `leaf_hash`ed).
    pub fn push(&mut self, leaf: Hash) {
        // Binary-counter carry: each trailing one bit of the old size is a perfect
        // subtree of the same height as the one being carried, so they merge.
        let mut carry = leaf;
        let mut bits = self.size;
        while bits & 1 == 1 {
            match self.frontier.pop() {
                Some(left) => carry = node_hash(&left, &carry),
                // Unreachable: the frontier has one entry per set bit of the size.
                None => break,
            }
            bits >>= 1;
        }
        self.frontier.push(carry);
        self.size += 1;
    }

    /// The number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree head, MTH of all leaves so far (RFC 6962 section 2.1).
    pub fn root(&self) -> Hash {
        // Fold right to left: MTH(D[n]) = HASH(0x01 || first-subtree || MTH(rest)).
        let mut iter = self.frontier.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// `k`, the largest power of two strictly smaller than `n` (RFC 6962 section 2.1);
/// the split point of a tree of `n >= 2` leaves. Returns 0 for `n < 2`.
fn split_point(n: usize) -> usize {
    match n.checked_sub(1).and_then(usize::checked_ilog2) {
        Some(exp) => 1 << exp,
        None => 0,
    }
}

/// Splits `d` at [`split_point`]; `None` for fewer than two leaves.
fn split(d: &[Hash]) -> Option<(&[Hash], &[Hash], usize)> {
    if d.len() < 2 {
        return None;
    }
    let k = split_point(d.len());
    let (left, right) = d.split_at_checked(k)?;
    Some((left, right, k))
}

/// MTH, the Merkle tree hash of a whole list of leaf hashes, by the recursive
/// definition of RFC 6962 section 2.1. O(n) hashing, recursion depth O(log n).
pub fn root_from_leaves(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [only] => *only,
        _ => match split(leaves) {
            Some((left, right, _)) => node_hash(&root_from_leaves(left), &root_from_leaves(right)),
            None => empty_root(), // unreachable: two or more leaves always split
        },
    }
}

fn len_u64(leaves: &[Hash]) -> u64 {
    // usize is at most 64 bits on every target Rust supports.
    leaves.len() as u64
}

/// The audit path of leaf `index` (RFC 6962 section 2.1.1, `PATH(m, D[n])`; RFC 9162
/// section 2.1.3.1): the sibling hashes from the leaf up to the root.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = len_u64(leaves);
    let out_of_range = ProofError::IndexOutOfRange { index, size };
    if index >= size {
        return Err(out_of_range);
    }
    let m = usize::try_from(index).map_err(|_| out_of_range)?;
    let mut proof = Vec::new();
    path(m, leaves, &mut proof);
    Ok(proof)
}

/// `PATH(m, D[n])`. `PATH(0, {d0}) = {}`; otherwise, with `k` the split point,
/// `PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])` for `m < k` and
/// `PATH(m - k, D[k:n]) : MTH(D[0:k])` for `m >= k`. The sibling subtree hashes summed
/// over all levels cover each leaf once, so this is O(n).
fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    let Some((left, right, k)) = split(d) else {
        return;
    };
    if m < k {
        path(m, left, out);
        out.push(root_from_leaves(right));
    } else {
        path(m - k, right, out);
        out.push(root_from_leaves(left));
    }
}

/// The consistency proof between the tree of the first `old_size` leaves and the tree
/// of all `leaves` (RFC 6962 section 2.1.2, `PROOF(m, D[n])`; RFC 9162 section 2.1.4.1).
///
/// Empty when `old_size` is 0 (every tree extends the empty tree) or equals the size.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>, ProofError> {
    let new_size = len_u64(leaves);
    let too_large = ProofError::OldSizeTooLarge { old_size, new_size };
    if old_size > new_size {
        return Err(too_large);
    }
    let mut proof = Vec::new();
    if old_size == 0 || old_size == new_size {
        return Ok(proof);
    }
    let m = usize::try_from(old_size).map_err(|_| too_large)?;
    subproof(m, leaves, true, &mut proof);
    Ok(proof)
}

/// `SUBPROOF(m, D[n], b)` (RFC 6962 section 2.1.2):
/// - `SUBPROOF(m, D[m], true) = {}` and `SUBPROOF(m, D[m], false) = {MTH(D[m])}`;
/// - for `m <= k`: `SUBPROOF(m, D[0:k], b) : MTH(D[k:n])`;
/// - for `m > k`: `SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])`.
///
/// `b` records whether the subtree is still the old tree itself, whose root the
/// verifier already knows and so need not be sent.
fn subproof(m: usize, d: &[Hash], b: bool, out: &mut Vec<Hash>) {
    if m == d.len() {
        if !b {
            out.push(root_from_leaves(d));
        }
        return;
    }
    let Some((left, right, k)) = split(d) else {
        return;
    };
    if m <= k {
        subproof(m, left, b, out);
        out.push(root_from_leaves(right));
    } else {
        subproof(m - k, right, false, out);
        out.push(root_from_leaves(left));
    }
}

/// `(inner, border)`: how many proof hashes of leaf `index` in a tree of `size` lie below
/// the point where its path leaves the perfect part of the tree, and how many above.
/// Used only to report a precise [`ProofError::WrongProofLength`] up front; the RFC
/// algorithms below would reject a wrong length anyway. Requires `index < size`.
fn decompose_inclusion(index: u64, size: u64) -> (u32, u32) {
    let inner = u64::BITS - (index ^ (size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner, border)
}

fn to_usize(n: u32) -> usize {
    // At most 128 here; usize is at least 16 bits.
    n as usize
}

/// Verifies that `leaf` is the leaf at `index` in the tree of `tree_size` leaves whose
/// root is `root`, following RFC 9162 section 2.1.3.2 step by step.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    // Step 1: "If leaf_index is greater than or equal to tree_size, then fail".
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange {
            index,
            size: tree_size,
        });
    }
    let (inner, border) = decompose_inclusion(index, tree_size);
    let expected = to_usize(inner + border);
    let wrong_length = ProofError::WrongProofLength {
        expected,
        actual: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_length);
    }

    // Step 2: "Set fn to leaf_index and sn to tree_size - 1."
    let mut fn_ = index;
    let mut sn = tree_size - 1;
    // Step 3: "Set r to hash."
    let mut r = *leaf;
    // Step 4: "For each value p in the inclusion_path array:"
    for p in proof {
        // 4a: "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0 {
            return Err(wrong_length);
        }
        // 4b: "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn_ & 1 == 1 || fn_ == sn {
            // i: "Set r to HASH(0x01 || p || r)."
            r = node_hash(p, &r);
            // ii: "If LSB(fn) is not set, then right-shift both fn and sn equally until
            // either LSB(fn) is set or fn is 0."
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            // "Otherwise: Set r to HASH(0x01 || r || p)."
            r = node_hash(&r, p);
        }
        // 4c: "Finally, right-shift both fn and sn one time."
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5: "If sn is equal to 0 and r and the root_hash are equal, then the log has
    // proven the inclusion of hash. Otherwise, fail the proof verification."
    if sn != 0 {
        return Err(wrong_length);
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: r,
            expected: *root,
        });
    }
    Ok(())
}

/// Verifies that the tree of `old_size` leaves with root `old_root` is a prefix of the
/// tree of `new_size` leaves with root `new_root`, following RFC 9162 section 2.1.4.2.
///
/// RFC 9162 states the algorithm for `0 < first < second`; the edge cases are handled
/// first: equal sizes need an empty proof and equal roots, and old size 0 needs an empty
/// proof and `old_root` equal to the empty-tree hash (every tree extends the empty one).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldSizeTooLarge { old_size, new_size });
    }
    if old_size == new_size || old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongProofLength {
                expected: 0,
                actual: proof.len(),
            });
        }
        if old_size == 0 {
            let empty = empty_root();
            if *old_root != empty {
                return Err(ProofError::OldRootMismatch {
                    computed: empty,
                    expected: *old_root,
                });
            }
        } else if old_root != new_root {
            return Err(ProofError::SameSizeDifferentRoots {
                size: old_size,
                old_root: *old_root,
                new_root: *new_root,
            });
        }
        return Ok(());
    }

    // From here 0 < old_size < new_size. The expected length: the inclusion path of the
    // old tree's last leaf in the new tree, minus the levels inside the old tree's
    // largest complete subtree, plus that subtree's root unless it is the old root.
    let (inner, border) = decompose_inclusion(old_size - 1, new_size);
    let shift = old_size.trailing_zeros();
    let seed_len = u32::from(!old_size.is_power_of_two());
    let expected = to_usize(inner.saturating_sub(shift) + border + seed_len);
    let wrong_length = ProofError::WrongProofLength {
        expected,
        actual: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_length);
    }

    // Step 1: "If consistency_path is an empty array, stop and fail".
    // Step 2: "If first is an exact power of 2, then prepend first_hash to the
    // consistency_path array." Instead of copying, take the head separately.
    let (head, rest) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        match proof.split_first() {
            Some((head, rest)) => (*head, rest),
            None => return Err(wrong_length),
        }
    };
    // Step 3: "Set fn to first - 1 and sn to second - 1."
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    // Step 4: "If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn)
    // is not set."
    if fn_ & 1 == 1 {
        while fn_ & 1 == 1 {
            fn_ >>= 1;
            sn >>= 1;
        }
    }
    // Step 5: "Set both fr and sr to the first value in the consistency_path array."
    let mut fr = head;
    let mut sr = head;
    // Step 6: "For each subsequent value c in the consistency_path array:"
    for c in rest {
        // 6a: "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0 {
            return Err(wrong_length);
        }
        // 6b: "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn_ & 1 == 1 || fn_ == sn {
            // i: "Set fr to HASH(0x01 || c || fr)." ii: "Set sr to HASH(0x01 || c || sr)."
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            // iii: "If LSB(fn) is not set, then right-shift both fn and sn equally until
            // either LSB(fn) is set or fn is 0."
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            // "Otherwise: Set sr to HASH(0x01 || sr || c)."
            sr = node_hash(&sr, c);
        }
        // 6c: "Finally, right-shift both fn and sn one time."
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7: "verify that the fr calculated is equal to the first_hash supplied, that
    // the sr calculated is equal to the second_hash supplied, and that sn is 0."
    if sn != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(ProofError::NewRootMismatch {
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Hash {
        assert_eq!(s.len(), 64, "{s}");
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        Hash(out)
    }

    /// Leaves of the certificate-transparency reference tests (CT's
    /// merkle_tree_test.cc, reused by transparency-dev/merkle).
    fn ct_leaves() -> Vec<Hash> {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        inputs.iter().map(|d| leaf_hash(d)).collect()
    }

    /// Roots of the CT test trees of sizes 1..=8.
    const CT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn synthetic_leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn empty_tree_hash_is_sha256_of_nothing() {
        let want = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(empty_root().to_string(), want);
        assert_eq!(root_from_leaves(&[]).to_string(), want);
        assert_eq!(CompactTree::new().root().to_string(), want);
    }

    #[test]
    fn hash_display_and_debug_are_hex() {
        let h = Hash([0xab; 32]);
        assert_eq!(h.to_string(), "ab".repeat(32));
        assert_eq!(format!("{h:?}"), format!("Hash({})", "ab".repeat(32)));
    }

    #[test]
    fn ct_reference_roots() {
        let leaves = ct_leaves();
        assert_eq!(leaves[0], hex(CT_ROOTS[0]), "leaf hash of the empty string");
        for (n, want) in CT_ROOTS.iter().enumerate() {
            let n = n + 1;
            assert_eq!(root_from_leaves(&leaves[..n]), hex(want), "size {n}");
            let mut tree = CompactTree::new();
            leaves[..n].iter().for_each(|l| tree.push(*l));
            assert_eq!(tree.root(), hex(want), "compact size {n}");
        }
    }

    #[test]
    fn ct_reference_inclusion_proofs() {
        let leaves = ct_leaves();
        // (leaf index, tree size, proof) from transparency-dev/merkle proof/verify_test.go
        // (which lists 1-based leaf numbers; converted to 0-based indices here).
        let vectors: [(u64, usize, &[&str]); 5] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, want) in vectors {
            let want: Vec<Hash> = want.iter().map(|h| hex(h)).collect();
            let got = inclusion_proof(&leaves[..size], index).unwrap();
            assert_eq!(got, want, "index {index} size {size}");
            let root = hex(CT_ROOTS[size - 1]);
            let leaf = leaves[index as usize];
            verify_inclusion(&leaf, index, size as u64, &want, &root).unwrap();
        }
    }

    #[test]
    fn ct_reference_consistency_proofs() {
        let leaves = ct_leaves();
        let vectors: [(u64, usize, &[&str]); 5] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, new, want) in vectors {
            let want: Vec<Hash> = want.iter().map(|h| hex(h)).collect();
            let got = consistency_proof(&leaves[..new], old).unwrap();
            assert_eq!(got, want, "{old} -> {new}");
            let old_root = hex(CT_ROOTS[old as usize - 1]);
            let new_root = hex(CT_ROOTS[new - 1]);
            verify_consistency(old, new as u64, &old_root, &new_root, &want).unwrap();
        }
    }

    #[test]
    fn compact_tree_matches_mth_for_sizes_0_to_200() {
        let leaves = synthetic_leaves(200);
        let mut tree = CompactTree::new();
        assert_eq!(tree.root(), root_from_leaves(&[]));
        for n in 1..=200 {
            tree.push(leaves[n - 1]);
            assert_eq!(tree.size(), n as u64);
            assert_eq!(tree.root(), root_from_leaves(&leaves[..n]), "size {n}");
            // The frontier holds one hash per set bit of the size.
            assert_eq!(tree.frontier.len(), n.count_ones() as usize);
        }
    }

    /// For each level of `PATH(index, D[size])`, leaf upwards, whether the sibling is on
    /// the left: derived from the recursive RFC 6962 definition, independently of the
    /// RFC 9162 bit-twiddling.
    fn path_shape(index: usize, size: usize) -> Vec<bool> {
        if size <= 1 {
            return vec![];
        }
        let k = split_point(size);
        let (mut shape, left) = if index < k {
            (path_shape(index, k), false)
        } else {
            (path_shape(index - k, size - k), true)
        };
        shape.push(left);
        shape
    }

    #[derive(Debug, PartialEq)]
    enum Step {
        /// Old size 0: consistent with anything, empty proof.
        FromEmpty,
        /// Equal sizes: empty proof, equal roots.
        SameSize,
        /// A proof hash that starts both old and new root (the old tree's largest
        /// complete subtree, when the old tree is not itself complete).
        Seed,
        /// A proof hash combined on the left of both roots.
        Left,
        /// A proof hash combined on the right of the new root only.
        Right,
    }

    /// How each hash of `PROOF(old, D[new])` is used, derived from the recursive RFC
    /// 6962 section 2.1.2 definition, independently of the RFC 9162 bit-twiddling.
    fn consistency_shape(old: usize, new: usize) -> Vec<Step> {
        fn sub(m: usize, n: usize, b: bool) -> Vec<Step> {
            if m == n {
                return if b { vec![] } else { vec![Step::Seed] };
            }
            let k = split_point(n);
            let (mut shape, step) = if m <= k {
                (sub(m, k, b), Step::Right)
            } else {
                (sub(m - k, n - k, false), Step::Left)
            };
            shape.push(step);
            shape
        }
        if old == 0 {
            vec![Step::FromEmpty]
        } else if old == new {
            vec![Step::SameSize]
        } else {
            sub(old, new, true)
        }
    }

    fn flip(proof: &[Hash], i: usize) -> Vec<Hash> {
        let mut p = proof.to_vec();
        p[i].0[i % 32] ^= 0x10;
        p
    }

    #[test]
    fn brute_force_inclusion_up_to_64() {
        let all = synthetic_leaves(64);
        for size in 1..=64usize {
            let leaves = &all[..size];
            let root = root_from_leaves(leaves);
            let n = size as u64;
            for index in 0..n {
                let leaf = leaves[index as usize];
                let proof = inclusion_proof(leaves, index).unwrap();
                verify_inclusion(&leaf, index, n, &proof, &root)
                    .unwrap_or_else(|e| panic!("index {index} size {size}: {e}"));

                for i in 0..proof.len() {
                    assert!(verify_inclusion(&leaf, index, n, &flip(&proof, i), &root).is_err());
                }
                for wrong_index in 0..n + 2 {
                    if wrong_index != index {
                        let r = verify_inclusion(&leaf, wrong_index, n, &proof, &root);
                        assert!(r.is_err(), "wrong index {wrong_index} for {index}/{size}");
                    }
                }
                // The RFC algorithm hashes in no tree size, so a proof also "verifies"
                // for another size whose tree has the very same path shape (e.g. leaf 0
                // of 3 and of 4 leaves); the signed checkpoint is what binds the size.
                // Every other wrong size must fail.
                let shape = path_shape(index as usize, size);
                for wrong_size in 0..=2 * n + 2 {
                    if wrong_size == n {
                        continue;
                    }
                    let r = verify_inclusion(&leaf, index, wrong_size, &proof, &root);
                    let same_shape = wrong_size > index
                        && path_shape(index as usize, wrong_size as usize) == shape;
                    assert_eq!(
                        r.is_ok(),
                        same_shape,
                        "size {wrong_size} for {index}/{size}"
                    );
                }
                let other_leaf = leaf_hash(b"not in the tree");
                assert!(verify_inclusion(&other_leaf, index, n, &proof, &root).is_err());
                assert!(verify_inclusion(&leaf, index, n, &proof, &empty_root()).is_err());
                let mut longer = proof.clone();
                longer.push(root);
                assert!(verify_inclusion(&leaf, index, n, &longer, &root).is_err());
                if !proof.is_empty() {
                    let shorter = &proof[..proof.len() - 1];
                    assert!(verify_inclusion(&leaf, index, n, shorter, &root).is_err());
                }
            }
        }
    }

    #[test]
    fn brute_force_consistency_up_to_64() {
        let all = synthetic_leaves(64);
        let roots: Vec<Hash> = (0..=64).map(|n| root_from_leaves(&all[..n])).collect();
        for new in 1..=64usize {
            let leaves = &all[..new];
            let new_root = roots[new];
            let n = new as u64;
            for old in 0..=n {
                let old_root = roots[old as usize];
                let proof = consistency_proof(leaves, old).unwrap();
                verify_consistency(old, n, &old_root, &new_root, &proof)
                    .unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));

                for i in 0..proof.len() {
                    let r = verify_consistency(old, n, &old_root, &new_root, &flip(&proof, i));
                    assert!(r.is_err(), "flipped hash {i} for {old} -> {new}");
                }
                // As with inclusion, sizes are only bound by the roots: a proof also
                // passes for other sizes whose proof has the very same shape (e.g.
                // 1 -> 3 and 1 -> 4), and old size 0 is consistent with any tree.
                // Every other wrong size must fail.
                let shape = consistency_shape(old as usize, new);
                for wrong_old in 0..=n + 1 {
                    if wrong_old != old {
                        let r = verify_consistency(wrong_old, n, &old_root, &new_root, &proof);
                        let same =
                            wrong_old <= n && consistency_shape(wrong_old as usize, new) == shape;
                        assert_eq!(r.is_ok(), same, "old size {wrong_old} for {old} -> {new}");
                    }
                }
                for wrong_new in 0..=2 * n + 2 {
                    if wrong_new != n {
                        let r = verify_consistency(old, wrong_new, &old_root, &new_root, &proof);
                        let same = old <= wrong_new
                            && consistency_shape(old as usize, wrong_new as usize) == shape;
                        assert_eq!(r.is_ok(), same, "new size {wrong_new} for {old} -> {new}");
                    }
                }
                let bogus = leaf_hash(b"bogus root");
                assert!(verify_consistency(old, n, &bogus, &new_root, &proof).is_err());
                if old != 0 {
                    assert!(verify_consistency(old, n, &old_root, &bogus, &proof).is_err());
                }
                if old != n {
                    let mut longer = proof.clone();
                    longer.push(new_root);
                    assert!(verify_consistency(old, n, &old_root, &new_root, &longer).is_err());
                }
                if !proof.is_empty() {
                    let shorter = &proof[..proof.len() - 1];
                    assert!(verify_consistency(old, n, &old_root, &new_root, shorter).is_err());
                    assert!(verify_consistency(old, n, &new_root, &old_root, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn proof_generation_errors() {
        let leaves = synthetic_leaves(5);
        assert_eq!(
            inclusion_proof(&leaves, 5),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            inclusion_proof(&[], 0),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            consistency_proof(&leaves, 6),
            Err(ProofError::OldSizeTooLarge {
                old_size: 6,
                new_size: 5
            })
        );
        assert_eq!(consistency_proof(&leaves, 0), Ok(vec![]));
        assert_eq!(consistency_proof(&leaves, 5), Ok(vec![]));
    }

    #[test]
    fn verification_error_variants() {
        let leaves = synthetic_leaves(7);
        let root = root_from_leaves(&leaves);
        let proof = inclusion_proof(&leaves, 3).unwrap();
        let leaf = leaves[3];

        assert_eq!(
            verify_inclusion(&leaf, 7, 7, &proof, &root),
            Err(ProofError::IndexOutOfRange { index: 7, size: 7 })
        );
        assert_eq!(
            verify_inclusion(&leaf, 3, 7, &proof[..2], &root),
            Err(ProofError::WrongProofLength {
                expected: 3,
                actual: 2
            })
        );
        assert!(matches!(
            verify_inclusion(&leaves[4], 3, 7, &proof, &root),
            Err(ProofError::RootMismatch { expected, .. }) if expected == root
        ));

        let old_root = root_from_leaves(&leaves[..3]);
        let cproof = consistency_proof(&leaves, 3).unwrap();
        assert_eq!(
            verify_consistency(8, 7, &old_root, &root, &cproof),
            Err(ProofError::OldSizeTooLarge {
                old_size: 8,
                new_size: 7
            })
        );
        assert!(matches!(
            verify_consistency(3, 7, &root, &root, &cproof),
            Err(ProofError::OldRootMismatch { .. })
        ));
        assert!(matches!(
            verify_consistency(3, 7, &old_root, &old_root, &cproof),
            Err(ProofError::NewRootMismatch { .. })
        ));
        assert!(matches!(
            verify_consistency(3, 7, &old_root, &root, &[]),
            Err(ProofError::WrongProofLength { actual: 0, .. })
        ));
        assert!(matches!(
            verify_consistency(7, 7, &old_root, &root, &[]),
            Err(ProofError::SameSizeDifferentRoots { size: 7, .. })
        ));
        assert_eq!(
            verify_consistency(7, 7, &root, &root, &[root]),
            Err(ProofError::WrongProofLength {
                expected: 0,
                actual: 1
            })
        );
        assert!(matches!(
            verify_consistency(0, 7, &root, &root, &[]),
            Err(ProofError::OldRootMismatch { .. })
        ));
        verify_consistency(0, 7, &empty_root(), &root, &[]).unwrap();
        verify_consistency(0, 0, &empty_root(), &empty_root(), &[]).unwrap();
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let e = ProofError::IndexOutOfRange { index: 9, size: 4 };
        assert_eq!(
            e.to_string(),
            "leaf index 9 is out of range for a tree of size 4"
        );
        let e = ProofError::WrongProofLength {
            expected: 3,
            actual: 2,
        };
        assert_eq!(
            e.to_string(),
            "proof has 2 hashes, but 3 are needed for these sizes"
        );
    }

    #[test]
    fn large_trees_agree() {
        // 100k leaves keeps the debug-mode test quick while exercising deep frontiers;
        // both algorithms are linear so 1M is only ten times this.
        let leaves = synthetic_leaves(100_000);
        let mut tree = CompactTree::new();
        leaves.iter().for_each(|l| tree.push(*l));
        let root = root_from_leaves(&leaves);
        assert_eq!(tree.root(), root);
        let index = 77_777;
        let proof = inclusion_proof(&leaves, index).unwrap();
        verify_inclusion(&leaves[index as usize], index, 100_000, &proof, &root).unwrap();
        let old_root = root_from_leaves(&leaves[..65_537]);
        let cproof = consistency_proof(&leaves, 65_537).unwrap();
        verify_consistency(65_537, 100_000, &old_root, &root, &cproof).unwrap();
    }
}
