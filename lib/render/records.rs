//! Series for line plots from JSON records: the `--log` files of the trainers (JSON lines, one
//! object per line) and the metric tables of the pipelines (JSON lines, or one JSON array of
//! objects).
//!
//! A record contributes the point (record[x], record[y]) when both are numbers (integers and
//! floats alike); records lacking either (a log's summary line, say) are skipped. With a series
//! key, records are grouped by its value (a string or a number), in order of first appearance;
//! without one, each file is one series named after the file, or after `--label`.

use anyhow::{bail, Context};
use serde_json::Value;

use super::plot::Series;
use crate::Result;

/// The JSON records in `text` (from `name`): an array of objects, or one object per line
/// (blank lines skipped).
pub fn parse_records(text: &str, name: &str) -> Result<Vec<Value>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(trimmed)
            .with_context(|| format!("{name}: not a JSON array of records"))?;
        return Ok(v.as_array().cloned().unwrap_or_default());
    }
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{name}, line {}: not a JSON record", i + 1))?;
        records.push(v);
    }
    Ok(records)
}

/// A record's field `key` as a number, `None` when absent or not a number. A dotted key reads
/// nested objects: `samples.classifier_fid.value`.
pub fn number(record: &Value, key: &str) -> Option<f64> {
    key.split('.')
        .try_fold(record, |v, k| v.get(k))
        .and_then(Value::as_f64)
}

/// The series of (x, y) points in `records` (from `name`), grouped by `series_key` when given
/// (else one series called `label`); an error naming the file and keys when no record has
/// both numbers.
pub fn series_of(
    records: &[Value],
    x: &str,
    y: &str,
    series_key: Option<&str>,
    label: &str,
    name: &str,
) -> Result<Vec<Series>> {
    let mut out: Vec<Series> = Vec::new();
    for r in records {
        let (Some(px), Some(py)) = (number(r, x), number(r, y)) else {
            continue;
        };
        let group = match series_key {
            None => label.to_string(),
            Some(k) => match k.split('.').try_fold(r, |v, k| v.get(k)) {
                Some(Value::String(s)) => s.clone(),
                Some(v @ Value::Number(_)) => format!("{k} = {v}"),
                _ => continue,
            },
        };
        match out.iter_mut().find(|s| s.name == group) {
            Some(s) => s.points.push((px, py)),
            None => out.push(Series {
                name: group,
                points: vec![(px, py)],
            }),
        }
    }
    if out.is_empty() {
        bail!(
            "{name} has no record with numbers at both \"{x}\" and \"{y}\"{}",
            series_key.map_or(String::new(), |k| format!(" and a value at \"{k}\""))
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_and_arrays_give_the_same_series() {
        let lines =
            "{\"step\": 0, \"loss\": 2.5}\n\n{\"step\": 50, \"loss\": 1}\n{\"done\": true}\n";
        let array = r#"[{"step": 0, "loss": 2.5}, {"step": 50, "loss": 1}]"#;
        for text in [lines, array] {
            let r = parse_records(text, "log").unwrap();
            let s = series_of(&r, "step", "loss", None, "run", "log").unwrap();
            assert_eq!(
                s,
                vec![Series {
                    name: "run".into(),
                    points: vec![(0.0, 2.5), (50.0, 1.0)]
                }]
            );
        }
    }

    #[test]
    fn grouping_nesting_and_errors() {
        let text = r#"[{"w": 1, "m": {"fid": 9}, "s": "euler"}, {"w": 2, "m": {"fid": 7}, "s": "heun"},
                      {"w": 3, "m": {"fid": 5}, "s": "euler"}]"#;
        let r = parse_records(text, "t").unwrap();
        let s = series_of(&r, "w", "m.fid", Some("s"), "", "t").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].name.as_str(), &s[0].points),
            ("euler", &vec![(1.0, 9.0), (3.0, 5.0)])
        );
        let e = series_of(&r, "w", "loss", None, "", "t.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.json") && e.contains("\"loss\""), "{e}");
        let e = parse_records("{\"a\": 1}\n{oops", "x.jsonl").unwrap_err();
        assert!(format!("{e:#}").contains("x.jsonl, line 2"), "{e:#}");
    }
}
