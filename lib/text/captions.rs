//! Captions from class labels (notes section 5, "how to condition on a prompt"): each label y of
//! an image set becomes a short text prompt, one of several phrasings of its class, so that a
//! text-conditioned model can be trained and evaluated on the data we have.
//!
//! Two class sets are known, [`ClassSet::FashionMnist`] (0 T-shirt/top, ..., 9 Ankle boot) and
//! [`ClassSet::Mnist`] (the digits 0-9). Each class has a few training phrasings and two
//! held-out ones ([`Split`]).
//!
//! Design decisions:
//! - **Sample i depends only on (seed, i) and its label.** Caption i is drawn uniformly from
//!   its class's phrasings of the split with the stream `rng::stream(seed, Purpose::Captions,
//!   i)`, so `--first` parts of a run concatenate to the bytes of the whole run.
//! - **Held-out phrasings are new wordings** ("a boot for the ankle", "the figure seven"),
//!   never equal to a training phrasing of any class, so a model that sees only the training
//!   split can be asked for a class in words it has never read. Every phrasing is distinct
//!   within its class set, so a caption names one class.
//! - **One alphabet.** Phrasings are lowercase ASCII (letters, digits, space, `-`, `+`)
//!   of at most [`MAX_LEN`] characters, and every character of a held-out phrasing occurs in
//!   some training phrasing: a character vocabulary built from training captions encodes the
//!   held-out ones (hence "the figure seven", not "the number seven": no digit is trained
//!   with a `b`). Their *words* may be new (that is the point), so a word vocabulary for them
//!   comes from every phrasing (`make-captions --list`, or `--phrasings all`).
//! - **`All` is the training phrasings then the held-out ones**, drawn alike; with 6 + 2
//!   phrasings each is drawn with probability 1/8.
//! - **The tables are code**, not a data file: a caption file is reproduced by the seed and the
//!   version of the tools, and changing a phrasing changes the bytes of every run that draws it.

use anyhow::bail;
use ndarray::ArrayD;
use rand::Rng;
use serde_json::json;

use crate::io::npy;
use crate::rng::{self, Purpose};
use crate::Result;

/// The longest phrasing, in characters: a (N, 32) character sequence holds every caption.
pub const MAX_LEN: usize = 32;

/// The characters a phrasing may use besides lowercase letters and digits.
pub const PUNCTUATION: &str = " -+";

/// A labelled image set whose classes have phrasings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClassSet {
    /// Fashion-MNIST: 0 T-shirt/top, 1 Trouser, ..., 9 Ankle boot
    FashionMnist,
    /// MNIST: the digits 0-9
    Mnist,
}

impl ClassSet {
    pub fn name(self) -> &'static str {
        match self {
            ClassSet::FashionMnist => "fashion-mnist",
            ClassSet::Mnist => "mnist",
        }
    }

    /// The classes, indexed by label.
    pub fn classes(self) -> &'static [Class] {
        match self {
            ClassSet::FashionMnist => FASHION_MNIST,
            ClassSet::Mnist => MNIST,
        }
    }
}

/// Which phrasings captions are drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The training phrasings
    Train,
    /// The held-out phrasings, never in training
    Heldout,
    /// Both
    All,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
            Split::All => "all",
        }
    }
}

/// One class: its name in the data set and its phrasings.
#[derive(Debug)]
pub struct Class {
    pub name: &'static str,
    pub train: &'static [&'static str],
    pub heldout: &'static [&'static str],
}

impl Class {
    /// The number of phrasings of `split`.
    pub fn count(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train.len(),
            Split::Heldout => self.heldout.len(),
            Split::All => self.train.len() + self.heldout.len(),
        }
    }

    /// Phrasing `k` (< `count(split)`) of `split`; `All` lists the training ones first.
    pub fn phrasing(&self, split: Split, k: usize) -> &'static str {
        match split {
            Split::Train => self.train[k],
            Split::Heldout => self.heldout[k],
            Split::All if k < self.train.len() => self.train[k],
            Split::All => self.heldout[k - self.train.len()],
        }
    }
}

const FASHION_MNIST: &[Class] = &[
    Class {
        name: "T-shirt/top",
        train: &[
            "a t-shirt",
            "t-shirt",
            "a tee",
            "a short-sleeved top",
            "a plain t-shirt",
            "a top",
        ],
        heldout: &["a top with short sleeves", "a tee shirt for summer"],
    },
    Class {
        name: "Trouser",
        train: &[
            "a pair of trousers",
            "trousers",
            "pants",
            "a pair of pants",
            "long trousers",
        ],
        heldout: &["a pair of slacks", "trousers with long legs"],
    },
    Class {
        name: "Pullover",
        train: &[
            "a pullover",
            "pullover",
            "a sweater",
            "a jumper",
            "a warm sweater",
        ],
        heldout: &["a knitted jumper", "a sweater to pull over"],
    },
    Class {
        name: "Dress",
        train: &[
            "a dress",
            "dress",
            "a summer dress",
            "a long dress",
            "a frock",
        ],
        heldout: &["a dress for a party", "a one-piece gown"],
    },
    Class {
        name: "Coat",
        train: &[
            "a coat",
            "coat",
            "a jacket",
            "a winter coat",
            "a heavy coat",
        ],
        heldout: &["a coat for cold weather", "an overcoat"],
    },
    Class {
        name: "Sandal",
        train: &[
            "a sandal",
            "sandal",
            "a summer sandal",
            "an open shoe",
            "a flat sandal",
        ],
        heldout: &["a shoe with straps", "footwear for the beach"],
    },
    Class {
        name: "Shirt",
        train: &[
            "a shirt",
            "shirt",
            "a button-up shirt",
            "a collared shirt",
            "a long-sleeved shirt",
        ],
        heldout: &["a shirt with buttons", "a blouse"],
    },
    Class {
        name: "Sneaker",
        train: &[
            "a sneaker",
            "sneaker",
            "a trainer",
            "a running shoe",
            "a sports shoe",
        ],
        heldout: &["a shoe for jogging", "a canvas sneaker"],
    },
    Class {
        name: "Bag",
        train: &["a bag", "bag", "a handbag", "a purse", "a shoulder bag"],
        heldout: &["a bag to carry things", "a tote"],
    },
    Class {
        name: "Ankle boot",
        train: &[
            "an ankle boot",
            "ankle boot",
            "a boot",
            "a short boot",
            "a leather boot",
        ],
        heldout: &["a boot for the ankle", "a boot up to the ankle"],
    },
];

const MNIST: &[Class] = &[
    Class {
        name: "0",
        train: &[
            "zero",
            "0",
            "the digit zero",
            "the digit 0",
            "one minus one",
            "nought",
        ],
        heldout: &["the figure zero", "five minus five"],
    },
    Class {
        name: "1",
        train: &[
            "one",
            "1",
            "the digit one",
            "the digit 1",
            "zero plus one",
            "1 + 0",
        ],
        heldout: &["the figure one", "three minus two"],
    },
    Class {
        name: "2",
        train: &[
            "two",
            "2",
            "the digit two",
            "the digit 2",
            "one plus one",
            "1 + 1",
        ],
        heldout: &["the figure two", "four minus two"],
    },
    Class {
        name: "3",
        train: &[
            "three",
            "3",
            "the digit three",
            "the digit 3",
            "two plus one",
            "1 + 2",
        ],
        heldout: &["the figure three", "six minus three"],
    },
    Class {
        name: "4",
        train: &[
            "four",
            "4",
            "the digit four",
            "the digit 4",
            "two plus two",
            "2 + 2",
        ],
        heldout: &["the figure four", "two times two"],
    },
    Class {
        name: "5",
        train: &[
            "five",
            "5",
            "the digit five",
            "the digit 5",
            "three plus two",
            "4 + 1",
        ],
        heldout: &["the figure five", "nine minus four"],
    },
    Class {
        name: "6",
        train: &[
            "six",
            "6",
            "the digit six",
            "the digit 6",
            "three plus three",
            "2 + 4",
        ],
        heldout: &["the figure six", "two times three"],
    },
    Class {
        name: "7",
        train: &[
            "seven",
            "7",
            "the digit seven",
            "the digit 7",
            "six plus one",
            "3 + 4",
        ],
        heldout: &["the figure seven", "ten minus three"],
    },
    Class {
        name: "8",
        train: &[
            "eight",
            "8",
            "the digit eight",
            "the digit 8",
            "four plus four",
            "5 + 3",
        ],
        heldout: &["the figure eight", "two times four"],
    },
    Class {
        name: "9",
        train: &[
            "nine",
            "9",
            "the digit nine",
            "the digit 9",
            "five plus four",
            "6 + 3",
        ],
        heldout: &["the figure nine", "three times three"],
    },
];

/// The caption of sample `index` of class `label` (< the number of classes; see
/// [`check_labels`]): a phrasing of `split` drawn uniformly from the stream
/// (seed, [`Purpose::Captions`], index).
pub fn caption(
    classes: ClassSet,
    split: Split,
    seed: u64,
    index: u64,
    label: usize,
) -> &'static str {
    let class = &classes.classes()[label];
    let n = class.count(split) as u32;
    let k = rng::stream(seed, Purpose::Captions, index).random_range(0..n);
    class.phrasing(split, k as usize)
}

/// The captions of samples `first`, `first + 1`, ... with these labels, one line each.
pub fn captions(
    classes: ClassSet,
    split: Split,
    seed: u64,
    first: u64,
    labels: &[usize],
) -> String {
    let mut text = String::new();
    for (i, &y) in labels.iter().enumerate() {
        text.push_str(caption(classes, split, seed, first + i as u64, y));
        text.push('\n');
    }
    text
}

/// Checks (N,) labels (`name` names their file) against the classes of `classes`.
pub fn check_labels(labels: &ArrayD<i64>, classes: ClassSet, name: &str) -> Result<Vec<usize>> {
    npy::expect_shape(labels.shape(), "N", "labels", name)?;
    let k = classes.classes().len() as i64;
    if let Some((i, y)) = labels
        .iter()
        .enumerate()
        .find(|(_, &y)| !(0..k).contains(&y))
    {
        bail!(
            "{name} holds the label {y} (sample {i}): expected {} classes 0..={}",
            classes.name(),
            k - 1
        );
    }
    Ok(labels.iter().map(|&y| y as usize).collect())
}

/// Reads (N,) int64 labels from a path or stdin (`-`) and checks them, naming the file.
pub fn read_labels(path: &str, classes: ClassSet) -> Result<Vec<usize>> {
    let labels = npy::read_i64(path)?;
    check_labels(&labels, classes, &crate::io::display_name(path))
}

/// Every phrasing of `classes` as JSON lines
/// `{"class": k, "name": "...", "phrasing": "...", "split": "train" | "heldout"}`, class by
/// class, the training phrasings first.
pub fn list(classes: ClassSet) -> String {
    let mut text = String::new();
    for (k, class) in classes.classes().iter().enumerate() {
        let splits = [(Split::Train, class.train), (Split::Heldout, class.heldout)];
        for (split, phrasings) in splits {
            for p in phrasings {
                let line =
                    json!({"class": k, "name": class.name, "phrasing": p, "split": split.name()});
                text.push_str(&line.to_string());
                text.push('\n');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const SETS: [ClassSet; 2] = [ClassSet::FashionMnist, ClassSet::Mnist];

    #[test]
    fn a_caption_depends_only_on_seed_index_and_label() {
        let labels: Vec<usize> = (0..40).map(|i| (i * 7) % 10).collect();
        for set in SETS {
            let whole = captions(set, Split::All, 5, 0, &labels);
            let parts = captions(set, Split::All, 5, 0, &labels[..13])
                + &captions(set, Split::All, 5, 13, &labels[13..]);
            assert_eq!(whole, parts);
            for (i, line) in whole.lines().enumerate() {
                assert_eq!(line, caption(set, Split::All, 5, i as u64, labels[i]));
            }
            assert_ne!(whole, captions(set, Split::All, 6, 0, &labels));
        }
    }

    #[test]
    fn splits_draw_only_their_phrasings_and_reach_all_of_them() {
        for set in SETS {
            for (y, class) in set.classes().iter().enumerate() {
                for split in [Split::Train, Split::Heldout, Split::All] {
                    let want: HashSet<&str> = (0..class.count(split))
                        .map(|k| class.phrasing(split, k))
                        .collect();
                    let drawn: HashSet<&str> =
                        (0..400).map(|i| caption(set, split, 3, i, y)).collect();
                    assert_eq!(drawn, want, "{} class {y} {}", set.name(), split.name());
                }
                for i in 0..400 {
                    let c = caption(set, Split::Train, 3, i, y);
                    assert!(!class.heldout.contains(&c), "train drew held-out {c:?}");
                }
            }
        }
    }

    #[test]
    fn every_class_has_both_splits_and_every_phrasing_is_distinct() {
        for set in SETS {
            assert_eq!(set.classes().len(), 10);
            let mut seen = HashSet::new();
            for class in set.classes() {
                assert!(class.train.len() >= 5, "{}: {:?}", class.name, class.train);
                assert!(
                    class.heldout.len() >= 2,
                    "{}: {:?}",
                    class.name,
                    class.heldout
                );
                for p in class.train.iter().chain(class.heldout) {
                    assert!(seen.insert(*p), "{} repeats {p:?}", set.name());
                }
            }
            // No held-out phrasing is a training phrasing of any class.
            let train: HashSet<&str> = set
                .classes()
                .iter()
                .flat_map(|c| c.train.iter().copied())
                .collect();
            for class in set.classes() {
                for p in class.heldout {
                    assert!(!train.contains(p), "{p:?} is held out and trained");
                }
            }
        }
    }

    #[test]
    fn phrasings_are_short_lowercase_ascii_and_held_out_characters_are_trained() {
        for set in SETS {
            let mut train_chars = HashSet::new();
            for class in set.classes() {
                for p in class.train.iter().chain(class.heldout) {
                    assert!(!p.is_empty() && p.len() <= MAX_LEN, "{p:?}");
                    assert_eq!(p.trim(), *p, "{p:?}");
                    let fine = |c: char| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || PUNCTUATION.contains(c)
                    };
                    assert!(p.chars().all(fine), "{p:?}");
                }
                train_chars.extend(class.train.iter().flat_map(|p| p.chars()));
            }
            for class in set.classes() {
                for p in class.heldout {
                    assert!(p.chars().all(|c| train_chars.contains(&c)), "{p:?}");
                }
            }
        }
    }

    #[test]
    fn labels_outside_the_classes_are_refused_naming_the_file() {
        let ok = ArrayD::from_shape_vec(vec![3], vec![0i64, 9, 4]).unwrap();
        assert_eq!(
            check_labels(&ok, ClassSet::Mnist, "y.npy").unwrap(),
            [0, 9, 4]
        );
        let bad = ArrayD::from_shape_vec(vec![3], vec![0i64, 10, 4]).unwrap();
        let e = check_labels(&bad, ClassSet::Mnist, "y.npy")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "y.npy holds the label 10 (sample 1): expected mnist classes 0..=9"
        );
        let square = ArrayD::from_shape_vec(vec![2, 2], vec![0i64; 4]).unwrap();
        let e = check_labels(&square, ClassSet::FashionMnist, "y.npy")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "expected labels (N), got (2, 2) in y.npy");
    }

    #[test]
    fn the_list_holds_every_phrasing_once() {
        for set in SETS {
            let text = list(set);
            let total: usize = set.classes().iter().map(|c| c.count(Split::All)).sum();
            assert_eq!(text.lines().count(), total);
            let first: serde_json::Value =
                serde_json::from_str(text.lines().next().unwrap()).unwrap();
            assert_eq!(first["class"], 0);
            assert_eq!(first["split"], "train");
            assert_eq!(first["phrasing"], set.classes()[0].train[0]);
        }
    }
}
