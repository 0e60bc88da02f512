//! The Merkle tree of RFC 9162 (certificate transparency v2) over the ledger:
//! leaf i is the hash of block i+1. Proofs and their verification follow the
//! RFC's sections 2.1.3 and 2.1.4 word for word, so any CT-style verifier
//! accepts them.

use sha2::{Digest, Sha256};

use crate::block::Hash;

pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// All perfect subtrees, level by level: `levels[k][i]` covers leaves
/// `i*2^k .. (i+1)*2^k`. Any subtree hash the RFC asks for is then a lookup
/// or, on the right edge, O(log n) hashes.
#[derive(Default, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

fn largest_pow2_below(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

impl Tree {
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut k = 0;
        while self.levels[k].len().is_multiple_of(2) {
            let l = &self.levels[k];
            let parent = node_hash(&l[l.len() - 2], &l[l.len() - 1]);
            if self.levels.len() == k + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[k + 1].push(parent);
            k += 1;
        }
    }

    /// The tree over `leaves`, each level hashed in parallel (opening a large log).
    pub fn from_leaves(leaves: Vec<Hash>) -> Tree {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() >= 2) {
            let below = levels.last().expect("a level");
            let pairs = below.len() / 2;
            let mut up = vec![[0u8; 32]; pairs];
            let chunk = pairs.div_ceil(workers).max(1024);
            std::thread::scope(|s| {
                for (i, out) in up.chunks_mut(chunk).enumerate() {
                    let base = i * chunk;
                    s.spawn(move || {
                        for (j, slot) in out.iter_mut().enumerate() {
                            let k = 2 * (base + j);
                            *slot = node_hash(&below[k], &below[k + 1]);
                        }
                    });
                }
            });
            levels.push(up);
        }
        if levels[0].is_empty() {
            levels.clear();
        }
        Tree { levels }
    }

    /// Drops leaves after `n` (used when an append batch fails to be written).
    pub fn truncate(&mut self, n: u64) {
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate((n >> k) as usize);
        }
    }

    pub fn leaf(&self, i: u64) -> Hash {
        self.levels[0][i as usize]
    }

    /// MTH(D[a:b]) of RFC 9162.
    fn subtree(&self, a: u64, b: u64) -> Hash {
        let n = b - a;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && a.is_multiple_of(n) {
            let k = n.trailing_zeros() as usize;
            return self.levels[k][(a >> k) as usize];
        }
        let k = largest_pow2_below(n);
        node_hash(&self.subtree(a, a + k), &self.subtree(a + k, b))
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Hash {
        assert!(size <= self.len(), "root of {size} leaves asked of a tree of {}", self.len());
        self.subtree(0, size)
    }

    /// PATH(m, D[0:size]) of RFC 9162 section 2.1.3.1.
    pub fn inclusion_proof(&self, m: u64, size: u64) -> Option<Vec<Hash>> {
        if m >= size || size > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        self.path(m, 0, size, &mut proof);
        Some(proof)
    }

    fn path(&self, m: u64, a: u64, b: u64, out: &mut Vec<Hash>) {
        let n = b - a;
        if n <= 1 {
            return;
        }
        let k = largest_pow2_below(n);
        if m < k {
            self.path(m, a, a + k, out);
            out.push(self.subtree(a + k, b));
        } else {
            self.path(m - k, a + k, b, out);
            out.push(self.subtree(a, a + k));
        }
    }

    /// PROOF(m, D[0:size]) of RFC 9162 section 2.1.4.1.
    pub fn consistency_proof(&self, m: u64, size: u64) -> Option<Vec<Hash>> {
        if m == 0 || m > size || size > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        self.subproof(m, 0, size, true, &mut proof);
        Some(proof)
    }

    fn subproof(&self, m: u64, a: u64, b: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = b - a;
        if m == n {
            if !whole {
                out.push(self.subtree(a, b));
            }
            return;
        }
        let k = largest_pow2_below(n);
        if m <= k {
            self.subproof(m, a, a + k, whole, out);
            out.push(self.subtree(a + k, b));
        } else {
            self.subproof(m - k, a + k, b, false, out);
            out.push(self.subtree(a, a + k));
        }
    }
}

/// RFC 9162 section 2.1.3.2.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 section 2.1.4.2.
pub fn verify_consistency(size1: u64, size2: u64, root1: &Hash, root2: &Hash, proof: &[Hash]) -> bool {
    if size1 == 0 || size1 > size2 {
        return false;
    }
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else { return false };
    let (mut f, mut s) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *root1 && sr == *root2 && s == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MTH straight from the RFC's recursive definition, as the reference.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = largest_pow2_below(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn tree(n: u64) -> (Tree, Vec<Hash>) {
        let mut t = Tree::default();
        let mut leaves = Vec::new();
        for i in 0..n {
            let l = leaf_hash(&i.to_be_bytes());
            t.push(l);
            leaves.push(l);
        }
        (t, leaves)
    }

    #[test]
    fn roots_match_the_recursive_definition() {
        let (t, leaves) = tree(70);
        for n in 0..=70 {
            assert_eq!(t.root(n), mth(&leaves[..n as usize]), "size {n}");
        }
    }

    #[test]
    fn rfc_6962_test_vector_roots() {
        // The 8 leaves of certificate-transparency's reference tests (hex inputs).
        let inputs = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
        let want = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut t = Tree::default();
        for (i, hexin) in inputs.iter().enumerate() {
            t.push(leaf_hash(&hex::decode(hexin).unwrap()));
            assert_eq!(hex::encode(t.root(i as u64 + 1)), want[i], "size {}", i + 1);
        }
        assert_eq!(hex::encode(empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_wrong_one_does_not() {
        let (t, leaves) = tree(40);
        for size in 1..=40u64 {
            let root = t.root(size);
            for m in 0..size {
                let p = t.inclusion_proof(m, size).unwrap();
                assert!(verify_inclusion(m, size, &leaves[m as usize], &p, &root), "m {m} size {size}");
                let other = leaves[((m + 1) % 40) as usize];
                assert!(!verify_inclusion(m, size, &other, &p, &root));
                if !p.is_empty() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_inclusion(m, size, &leaves[m as usize], &bad, &root));
                }
                if m + 1 < size {
                    assert!(!verify_inclusion(m + 1, size, &leaves[m as usize], &p, &root));
                }
            }
        }
        assert!(t.inclusion_proof(5, 5).is_none());
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_wrong_one_does_not() {
        let (t, _) = tree(40);
        for size2 in 1..=40u64 {
            for size1 in 1..=size2 {
                let p = t.consistency_proof(size1, size2).unwrap();
                let (r1, r2) = (t.root(size1), t.root(size2));
                assert!(verify_consistency(size1, size2, &r1, &r2, &p), "{size1} -> {size2}");
                if size1 < size2 {
                    let mut bad_root = r1;
                    bad_root[3] ^= 1;
                    assert!(!verify_consistency(size1, size2, &bad_root, &r2, &p));
                    assert!(!verify_consistency(size1, size2, &r1, &r1, &p) || r1 == r2);
                }
            }
        }
    }

    #[test]
    fn a_tree_built_at_once_equals_one_built_leaf_by_leaf() {
        for n in [0u64, 1, 2, 3, 5, 8, 1000, 5000] {
            let (t, leaves) = tree(n);
            let bulk = Tree::from_leaves(leaves);
            assert_eq!(bulk.len(), n);
            assert_eq!(bulk.root(n), t.root(n), "size {n}");
            let mut grown = bulk.clone();
            grown.push(leaf_hash(&n.to_be_bytes()));
            let (t2, _) = tree(n + 1);
            assert_eq!(grown.root(n + 1), t2.root(n + 1));
        }
    }

    #[test]
    fn truncate_matches_a_tree_built_to_that_size() {
        let (mut t, _) = tree(37);
        t.truncate(21);
        let (t21, _) = tree(21);
        assert_eq!(t.len(), 21);
        assert_eq!(t.root(21), t21.root(21));
        t.push(leaf_hash(&21u64.to_be_bytes()));
        let (t22, _) = tree(22);
        assert_eq!(t.root(22), t22.root(22));
    }
}
