//! Text for conditioning on a prompt (notes section 5, "how to condition on a prompt": the
//! guidance variable y becomes a piece of text, embedded by a text encoder, in place of a class
//! number).
//!
//! The image sets we have carry class labels, not descriptions, so the first text is made from
//! the labels: [`captions`] turns each label into one of several phrasings of its class, with a
//! held-out set of phrasings that training never sees, to measure whether a model conditioned
//! on text generalises to new wordings of a class it knows.
//!
//! On the wire a caption file is plain text, one caption per line, in the order of the labels;
//! `import-text` turns it into tokens.

pub mod captions;
