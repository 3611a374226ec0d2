//! Differential: the audit log's Merkle tree (`lastmile_audit_log::merkle`: tree heads,
//! inclusion and consistency proofs, and their verification) against a straightforward
//! RFC 9162 §2.1 computation written here from the RFC's recursive definitions (MTH, PATH,
//! SUBPROOF), with its own hashing.
//!
//! Input: the tree size (0-129) and leaf contents, a leaf index and an old size, a mutation
//! to apply to the proofs, and proof hashes for a second, virtual tree of any 64-bit size.
//!
//! Checked:
//! - `root_from_leaves`, `CompactTree` and the reference MTH give the same root (for the
//!   whole tree and its first prefixes);
//! - `inclusion_proof` and `consistency_proof` are the reference PATH and PROOF;
//! - genuine proofs verify; for mutated proofs (a hash changed, dropped, added or moved, the
//!   index or sizes changed, another root) `verify_inclusion`/`verify_consistency` accept
//!   exactly when the reference verifier, which rebuilds the roots by walking the RFC's
//!   recursive tree shape, does;
//! - for the virtual tree (sizes up to 2^64 - 1, where no leaves can be built), proofs made
//!   of the input's hashes with the roots the reference computes from them verify, and a
//!   proof with one hash changed does not.

#![no_main]

use lastmile_audit_log::{
    CompactTree, Hash, consistency_proof, inclusion_proof, leaf_hash, root_from_leaves,
    verify_consistency, verify_inclusion,
};
use lastmile_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

type H = [u8; 32];

fn ref_leaf(data: &[u8]) -> H {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

fn ref_node(l: &H, r: &H) -> H {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n >= 2).
fn split(n: u64) -> u64 {
    let mut k: u64 = 1;
    while k.checked_mul(2).is_some_and(|d| d < n) {
        k *= 2;
    }
    k
}

/// MTH (RFC 9162 §2.1.1).
fn ref_mth(d: &[H]) -> H {
    match d.len() {
        0 => Sha256::digest([]).into(),
        1 => d[0],
        n => {
            let k = split(n as u64) as usize;
            ref_node(&ref_mth(&d[..k]), &ref_mth(&d[k..]))
        }
    }
}

/// PATH(m, D[n]) (RFC 9162 §2.1.3.1).
fn ref_path(m: usize, d: &[H]) -> Vec<H> {
    if d.len() <= 1 {
        return Vec::new();
    }
    let k = split(d.len() as u64) as usize;
    let (mut p, sibling) = if m < k {
        (ref_path(m, &d[..k]), ref_mth(&d[k..]))
    } else {
        (ref_path(m - k, &d[k..]), ref_mth(&d[..k]))
    };
    p.push(sibling);
    p
}

/// SUBPROOF(m, D[n], b) (RFC 9162 §2.1.4.1).
fn ref_subproof(m: usize, d: &[H], b: bool) -> Vec<H> {
    if m == d.len() {
        return if b { Vec::new() } else { vec![ref_mth(d)] };
    }
    let k = split(d.len() as u64) as usize;
    let (mut p, sibling) = if m <= k {
        (ref_subproof(m, &d[..k], b), ref_mth(&d[k..]))
    } else {
        (ref_subproof(m - k, &d[k..], false), ref_mth(&d[..k]))
    };
    p.push(sibling);
    p
}

/// PROOF(m, D[n]): empty for m = 0 and m = n.
fn ref_proof(m: usize, d: &[H]) -> Vec<H> {
    if m == 0 || m == d.len() {
        Vec::new()
    } else {
        ref_subproof(m, d, true)
    }
}

/// The root leaf `m` of a tree of `n` leaves has, given the proof, walking the tree's shape
/// (the proof's last hash is the top sibling); None when the proof has the wrong length.
fn ref_incl_root(m: u64, n: u64, leaf: &H, proof: &[H]) -> Option<H> {
    if n == 1 {
        return proof.is_empty().then_some(*leaf);
    }
    let (sibling, rest) = proof.split_last()?;
    let k = split(n);
    Some(if m < k {
        ref_node(&ref_incl_root(m, k, leaf, rest)?, sibling)
    } else {
        ref_node(sibling, &ref_incl_root(m - k, n - k, leaf, rest)?)
    })
}

/// The (old, new) roots a consistency proof between sizes m <= n gives, walking SUBPROOF's
/// shape; `old` is the old root the verifier already holds (used where b is still true).
fn ref_cons_roots(m: u64, n: u64, b: bool, old: &H, proof: &[H]) -> Option<(H, H)> {
    if m == n {
        return if b {
            proof.is_empty().then_some((*old, *old))
        } else {
            match proof {
                [only] => Some((*only, *only)),
                _ => None,
            }
        };
    }
    let (sibling, rest) = proof.split_last()?;
    let k = split(n);
    if m <= k {
        let (o, nw) = ref_cons_roots(m, k, b, old, rest)?;
        Some((o, ref_node(&nw, sibling)))
    } else {
        let (o, nw) = ref_cons_roots(m - k, n - k, false, old, rest)?;
        Some((ref_node(sibling, &o), ref_node(sibling, &nw)))
    }
}

/// The reference's verdict on an inclusion proof.
fn ref_verify_inclusion(leaf: &H, m: u64, n: u64, proof: &[H], root: &H) -> bool {
    m < n && ref_incl_root(m, n, leaf, proof).is_some_and(|r| r == *root)
}

/// The reference's verdict on a consistency proof (the edge cases as RFC 9162 §2.1.4.2
/// leaves them to the implementation, and as lastmile documents them: old size 0 proves
/// nothing but needs the empty root, equal sizes need equal roots, both with no proof).
fn ref_verify_consistency(m: u64, n: u64, old: &H, new: &H, proof: &[H]) -> bool {
    if m > n {
        return false;
    }
    if m == 0 {
        let empty: H = Sha256::digest([]).into();
        return proof.is_empty() && *old == empty;
    }
    if m == n {
        return proof.is_empty() && old == new;
    }
    ref_cons_roots(m, n, true, old, proof).is_some_and(|(o, nw)| o == *old && nw == *new)
}

fn hashes(v: &[H]) -> Vec<Hash> {
    v.iter().copied().map(Hash).collect()
}

/// Applies mutation `op` (with parameter `x`) to a proof.
fn mutate(op: u8, x: u8, proof: &mut Vec<H>) {
    let len = proof.len();
    match op % 6 {
        0 => {}
        1 if len > 0 => proof[usize::from(x) % len][usize::from(x) % 32] ^= 1 << (x % 8),
        2 if len > 0 => {
            proof.remove(usize::from(x) % len);
        }
        3 => proof.insert(usize::from(x) % (len + 1), [x; 32]),
        4 if len > 1 => proof.swap(usize::from(x) % len, (usize::from(x) + 1) % len),
        5 if len > 0 => {
            proof.pop();
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let n = usize::from(input.u16() % 130);
    let index = usize::from(input.u16());
    let old_size = usize::from(input.u16());
    let (op, x, size_op) = (input.byte(), input.byte(), input.byte());

    let contents: Vec<u8> = input.take(n).to_vec();
    let leaf_data = |i: usize| [contents.get(i).copied().unwrap_or(0), (i % 251) as u8];
    let ref_leaves: Vec<H> = (0..n).map(|i| ref_leaf(&leaf_data(i))).collect();
    let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&leaf_data(i))).collect();
    assert_eq!(hashes(&ref_leaves), leaves);

    // Tree heads, for every prefix.
    let mut compact = CompactTree::new();
    for i in 0..=n {
        if i > 0 {
            compact.push(leaves[i - 1]);
        }
        if i == n || i <= 17 || i.is_power_of_two() {
            let expected = Hash(ref_mth(&ref_leaves[..i]));
            assert_eq!(root_from_leaves(&leaves[..i]), expected, "size {i}");
            assert_eq!(compact.root(), expected, "compact tree of size {i}");
            assert_eq!(compact.size(), i as u64);
        }
    }
    let root = ref_mth(&ref_leaves);

    // Inclusion.
    if n > 0 {
        let m = index % n;
        let proof = inclusion_proof(&leaves, m as u64).expect("an index inside the tree");
        let expected = ref_path(m, &ref_leaves);
        assert_eq!(proof, hashes(&expected), "PATH({m}, D[{n}])");
        verify_inclusion(&leaves[m], m as u64, n as u64, &proof, &Hash(root))
            .expect("a genuine inclusion proof verifies");

        let mut p = expected;
        mutate(op, x, &mut p);
        let (mm, nn) = match size_op % 5 {
            1 => (m as u64 + 1, n as u64),
            2 => (m as u64, n as u64 + 1),
            3 => (m as u64, (n as u64).saturating_sub(1)),
            4 => (m as u64 ^ 1, n as u64),
            _ => (m as u64, n as u64),
        };
        let claimed_root = if op & 0x80 != 0 { [x; 32] } else { root };
        let ours = verify_inclusion(&leaves[m], mm, nn, &hashes(&p), &Hash(claimed_root));
        let reference = ref_verify_inclusion(&ref_leaves[m], mm, nn, &p, &claimed_root);
        assert_eq!(
            ours.is_ok(),
            reference,
            "inclusion of {m} (claimed {mm}) in {n} (claimed {nn}): ours {ours:?}"
        );
    }
    assert!(inclusion_proof(&leaves, n as u64).is_err());

    // Consistency.
    let m = old_size % (n + 1);
    let proof = consistency_proof(&leaves, m as u64).expect("an old size inside the tree");
    let expected = ref_proof(m, &ref_leaves);
    assert_eq!(proof, hashes(&expected), "PROOF({m}, D[{n}])");
    let old_root = ref_mth(&ref_leaves[..m]);
    verify_consistency(m as u64, n as u64, &Hash(old_root), &Hash(root), &proof)
        .expect("a genuine consistency proof verifies");
    let mut p = expected;
    mutate(op, x, &mut p);
    let (mm, nn) = match size_op % 5 {
        1 => (m as u64 + 1, n as u64),
        2 => (m as u64, n as u64 + 1),
        3 => ((m as u64).saturating_sub(1), n as u64),
        4 => (m as u64, (n as u64).saturating_sub(1)),
        _ => (m as u64, n as u64),
    };
    let (o, nw) = match op >> 6 {
        1 => ([x; 32], root),
        2 => (old_root, [x; 32]),
        _ => (old_root, root),
    };
    let ours = verify_consistency(mm, nn, &Hash(o), &Hash(nw), &hashes(&p));
    let reference = ref_verify_consistency(mm, nn, &o, &nw, &p);
    assert_eq!(
        ours.is_ok(),
        reference,
        "consistency {m} (claimed {mm}) -> {n} (claimed {nn}): ours {ours:?}"
    );
    assert!(consistency_proof(&leaves, n as u64 + 1).is_err());

    virtual_tree(&mut input);
});

/// Proofs in a tree of any size, built from the input's hashes.
fn virtual_tree(input: &mut Input<'_>) {
    let size = input.u64().max(1);
    let index = input.u64() % size;
    let old = input.u64() % size.saturating_add(1);
    let pool: Vec<H> = (0..70).map(|_| input.array::<32>()).collect();
    let leaf = pool[69];

    // Inclusion: a proof of the length the shape needs, and the root it gives.
    let depth = {
        let (mut m, mut n, mut d) = (index, size, 0);
        while n > 1 {
            let k = split(n);
            if m < k {
                n = k;
            } else {
                m -= k;
                n -= k;
            }
            d += 1;
        }
        d
    };
    let proof: Vec<H> = pool[..depth].to_vec();
    let root = ref_incl_root(index, size, &leaf, &proof).expect("a proof of the right length");
    verify_inclusion(&Hash(leaf), index, size, &hashes(&proof), &Hash(root))
        .expect("a proof the reference builds verifies");
    if !proof.is_empty() {
        let mut bad = proof.clone();
        bad[0][0] ^= 1;
        assert!(verify_inclusion(&Hash(leaf), index, size, &hashes(&bad), &Hash(root)).is_err());
    }

    // Consistency between `old` and `size`.
    if old == 0 || old == size {
        return;
    }
    let len = {
        let (mut m, mut n, mut b, mut len) = (old, size, true, 0);
        while m != n {
            let k = split(n);
            if m > k {
                m -= k;
                n -= k;
                b = false;
            } else {
                n = k;
            }
            len += 1;
        }
        len + usize::from(!b)
    };
    let proof: Vec<H> = pool[..len].to_vec();
    let old_root_in = pool[68];
    let (old_root, new_root) =
        ref_cons_roots(old, size, true, &old_root_in, &proof).expect("a proof of the right length");
    verify_consistency(old, size, &Hash(old_root), &Hash(new_root), &hashes(&proof))
        .expect("a consistency proof the reference builds verifies");
    let mut bad = proof.clone();
    bad[len - 1][31] ^= 0x80;
    assert!(
        verify_consistency(old, size, &Hash(old_root), &Hash(new_root), &hashes(&bad)).is_err()
    );
}
