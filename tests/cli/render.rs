//! render-grid: every kind of panel gives a valid PNG of the expected size that is not blank;
//! bad shapes and flags fail cleanly without touching the output.

use crate::common::*;
use flowpipe::io::npy;
use image::RgbImage;
use ndarray::{ArrayD, IxDyn};
use std::process::Command;

const NOISE: &str = bin!("sample-noise");
const RENDER: &str = bin!("render-grid");

/// Decodes PNG bytes, asserting they are a PNG.
fn png(bytes: &[u8]) -> RgbImage {
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

/// Reads the PNG at `p` and asserts it has more than one colour.
fn drawn(p: &str) -> RgbImage {
    let img = png(&std::fs::read(p).unwrap());
    let first = *img.get_pixel(0, 0);
    assert!(img.pixels().any(|q| *q != first), "{p} is one flat colour");
    img
}

/// Writes an f32 array of `shape` whose values are f(flat index).
fn save(dir: &tempfile::TempDir, name: &str, shape: &[usize], f: impl Fn(usize) -> f32) -> String {
    let n = shape.iter().product();
    let p = path(dir, name);
    npy::write(&p, &npy::from_vec(shape, (0..n).map(f).collect()).unwrap()).unwrap();
    p
}

/// A deterministic pseudo-random value in [-1, 1) for index i.
fn wobble(i: usize) -> f32 {
    ((i.wrapping_mul(2654435761) % 1000) as f32) / 500.0 - 1.0
}

/// Trajectories (N, T, D) moving from wobbly starts to (1, 1, ...).
fn traj(dir: &tempfile::TempDir, name: &str, n: usize, t: usize, d: usize) -> String {
    save(dir, name, &[n, t, d], |i| {
        let (s, j) = (i / (t * d), (i / d) % t);
        let tau = j as f32 / (t - 1) as f32;
        (1.0 - tau) * wobble(s * d + i % d) + tau
    })
}

#[test]
fn sample_noise_grid_has_the_exact_size() {
    let dir = tmp();
    let x = ok(
        NOISE,
        &["-n", "64", "--shape", "1,28,28", "--seed", "1"],
        b"",
    );
    let out = path(&dir, "grid.png");
    ok(RENDER, &["--upscale", "2", "-o", &out], &x);
    // 8 columns of 2·28 px plus 2 px padding between and around: 8·58 + 2.
    assert_eq!(drawn(&out).dimensions(), (466, 466));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
    // stdout gives the same bytes as the file; columns, pad and (N, H, W) images.
    let piped = ok(RENDER, &["--upscale", "2"], &x);
    assert_eq!(piped, std::fs::read(&out).unwrap());
    let hw = ok(NOISE, &["-n", "10", "--shape", "6,5"], b"");
    let img = png(&ok(
        RENDER,
        &["--cols", "5", "--pad", "1", "--range=-1,1"],
        &hw,
    ));
    assert_eq!(img.dimensions(), (5 * 6 + 1, 2 * 7 + 1));
}

#[test]
fn point_plots_have_the_panel_size() {
    let dir = tmp();
    let pts = save(&dir, "pts.npy", &[300, 2], wobble);
    let vals = save(&dir, "vals.npy", &[300], wobble);
    let col = save(&dir, "col.npy", &[300, 1], wobble);
    let labels = path(&dir, "labels.npy");
    let l = ArrayD::from_shape_fn(IxDyn(&[300]), |i| (i[0] % 3) as i64);
    npy::write(&labels, &l).unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("scatter", vec![&pts, "--labels", &labels, "--alpha", "0.3"]),
        ("hist", vec![&pts, "--kind", "hist", "--bins", "20"]),
        ("kde", vec![&pts, "--kind", "kde", "--bins", "40"]),
        ("hist1d", vec![&vals, "--bins", "30"]),
        ("hist1d-col", vec![&col, "--bounds=-2,2"]),
    ];
    for (name, mut args) in cases {
        let out = path(&dir, &format!("{name}.png"));
        args.extend(["--size", "200x160", "-o", &out]);
        ok(RENDER, &args, b"");
        assert_eq!(drawn(&out).dimensions(), (200, 160), "{name}");
    }
}

#[test]
fn trajectories_lines_and_snapshots() {
    let dir = tmp();
    let t1 = traj(&dir, "t1.npy", 20, 15, 1);
    let t2 = traj(&dir, "t2.npy", 20, 15, 2);
    for (name, input) in [("d1", &t1), ("d2", &t2)] {
        let out = path(&dir, &format!("{name}.png"));
        ok(
            RENDER,
            &[input, "--size", "180x150", "--max-lines", "5", "-o", &out],
            b"",
        );
        assert_eq!(drawn(&out).dimensions(), (180, 150), "{name}");
    }
    // K snapshots side by side, sharing bounds and a background grid.
    let bg = save(&dir, "bg.npy", &[8, 10], |i| i as f32);
    let out = path(&dir, "snap.png");
    let args = [
        &t2,
        "--snapshots",
        "3",
        "--size",
        "150x120",
        "--bounds=-2,2,-2,2",
        "--background",
        &bg,
        "-o",
        &out,
    ];
    ok(RENDER, &args, b"");
    assert_eq!(drawn(&out).dimensions(), (3 * 150, 120));
    let out1 = path(&dir, "snap1.png");
    ok(
        RENDER,
        &[&t1, "--snapshots", "2", "--size", "150x120", "-o", &out1],
        b"",
    );
    assert_eq!(drawn(&out1).dimensions(), (2 * 150, 120));
}

#[test]
fn quiver_needs_its_kind() {
    let dir = tmp();
    let f = save(&dir, "field.npy", &[49, 4], |i| {
        let (r, k) = (i / 4, i % 4);
        let (x, y) = ((r % 7) as f32 - 3.0, (r / 7) as f32 - 3.0);
        [x, y, -y, x][k]
    });
    let out = path(&dir, "q.png");
    let o = run(RENDER, &[&f, "-o", &out], b"");
    fails(&o, 2, &["field.npy", "(49, 4)", "--kind quiver"]);
    ok(
        RENDER,
        &[&f, "--kind", "quiver", "--size", "200x200", "-o", &out],
        b"",
    );
    assert_eq!(drawn(&out).dimensions(), (200, 200));
}

#[test]
fn several_inputs_and_a_png_are_tiled() {
    let dir = tmp();
    let pts = save(&dir, "pts.npy", &[100, 2], wobble);
    let imgs = save(&dir, "imgs.npy", &[4, 1, 10, 10], wobble);
    let grid = path(&dir, "grid.png");
    ok(RENDER, &[&imgs, "-o", &grid], b""); // 2·12 + 2 = 26 px square
    let out = path(&dir, "all.png");
    let args = [&pts, &grid, &imgs, "--size", "120x100", "-o", &out];
    ok(RENDER, &args, b"");
    assert_eq!(drawn(&out).dimensions(), (120 + 26 + 26, 100));
    // The pasted PNG is there pixel for pixel (centred vertically in its cell).
    let all = drawn(&out);
    let g = png(&std::fs::read(&grid).unwrap());
    assert_eq!(all.get_pixel(120 + 3, 37 + 3), g.get_pixel(3, 3));
    let out2 = path(&dir, "rows.png");
    let args = [&pts, &pts, &pts, "--size", "120x100", "--panel-cols", "2"];
    ok(RENDER, &[&args[..], &["-o", &out2]].concat(), b"");
    assert_eq!(drawn(&out2).dimensions(), (240, 200));
    // One title per input.
    let o = run(RENDER, &[&pts, &pts, "--titles", "a;b;c", "-o", &out2], b"");
    fails(&o, 2, &["--titles"]);
}

#[test]
fn without_a_font_plots_are_drawn_without_text() {
    let dir = tmp();
    let pts = save(&dir, "pts.npy", &[50, 2], wobble);
    let out = path(&dir, "plain.png");
    let o = Command::new(RENDER)
        .args([&pts, "--title", "gone", "--size", "100x90", "-o", &out])
        .env("FLOWPIPE_FONT", "")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // No font: no title band either.
    assert_eq!(drawn(&out).dimensions(), (100, 90));
}

#[test]
fn bad_shape_fails_naming_file_and_shape_and_leaves_no_output() {
    let dir = tmp();
    let bad = save(&dir, "bad.npy", &[2, 3, 4, 5, 6], wobble);
    let out = path(&dir, "out.png");
    let o = run(RENDER, &[&bad, "-o", &out], b"");
    fails(
        &o,
        1,
        &[
            "render-grid: error:",
            "bad.npy",
            "(2, 3, 4, 5, 6)",
            "expected",
        ],
    );
    assert!(!std::path::Path::new(&out).exists());
    let pts = save(&dir, "pts.npy", &[10, 3], wobble);
    let o = run(RENDER, &[&pts, "--kind", "scatter", "-o", &out], b"");
    fails(
        &o,
        1,
        &["expected points (N, 2), got (10, 3) in", "pts.npy"],
    );
    // An existing output stays as it was.
    std::fs::write(&out, b"precious").unwrap();
    let o = run(RENDER, &[&bad, "-o", &out], b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    assert_eq!(files(dir.path()).len(), 3, "a temp file was left behind");
}

#[test]
fn bad_flags_exit_2() {
    let dir = tmp();
    let imgs = save(&dir, "imgs.npy", &[4, 1, 4, 4], wobble);
    let out = path(&dir, "out.png");
    for (flags, needle) in [
        (vec!["--cols", "0"], "--cols"),
        (vec!["--upscale", "0"], "--upscale"),
        (vec!["--range", "1,0"], "--range"),
        (vec!["--range", "low"], "--range"),
        (vec!["--bounds", "0,1,2"], "--bounds"),
        (vec!["--size", "0x10"], "--size"),
        (vec!["--alpha", "0"], "--alpha"),
        (vec!["--background", &imgs], "--bounds"),
        (vec!["--snapshots", "2"], "--snapshots"),
    ] {
        let args = [&[imgs.as_str()][..], &flags, &["-o", &out]].concat();
        let o = run(RENDER, &args, b"");
        fails(&o, 2, &[needle]);
    }
    assert!(!std::path::Path::new(&out).exists());
}

const PLOT: &str = bin!("render-plot");

/// render-plot: a training log and a metric table become one panel per --y key, side by side;
/// missing keys, bad JSON and a wrong label count fail with one line and no output.
#[test]
fn render_plot_draws_logs_and_tables_and_refuses_bad_input() {
    let d = tmp();
    let log = path(&d, "loss.jsonl");
    let text: String = (0..60)
        .map(|s| {
            format!(
                "{{\"step\": {}, \"loss\": {}}}\n",
                10 * s,
                100.0 / (1.0 + s as f64)
            )
        })
        .collect::<String>()
        + "{\"done\": true}\n";
    std::fs::write(&log, text).unwrap();
    let out = path(&d, "loss.png");
    ok(
        PLOT,
        &[
            &log, "--log-y", "--smooth", "5", "--size", "300x200", "-o", &out,
        ],
        b"",
    );
    let img = drawn(&out);
    assert_eq!(img.dimensions(), (300, 200));

    // Two metrics of a table from stdin: two panels side by side, one line per sampler.
    let table = r#"[{"w": 1, "fid": 30, "acc": 0.6, "s": "euler"}, {"w": 3, "fid": 20, "acc": 0.9, "s": "euler"},
                    {"w": 1, "fid": 25, "acc": 0.7, "s": "heun"}, {"w": 3, "fid": 15, "acc": 0.95, "s": "heun"}]"#;
    let png_bytes = ok(
        PLOT,
        &[
            "--x", "w", "--y", "fid,acc", "--series", "s", "--size", "300x200", "--title", "t",
        ],
        table.as_bytes(),
    );
    let img = png(&png_bytes);
    assert_eq!(img.width(), 600);
    assert!(img.height() > 200, "the title band sits above the panels");

    let o = run(PLOT, &[&log, "--y", "accuracy", "-o", &out], b"");
    fails(&o, 1, &["loss.jsonl", "\"accuracy\""]);
    let bad = path(&d, "bad.jsonl");
    std::fs::write(&bad, "{\"step\": 1, \"loss\": 2}\n{oops\n").unwrap();
    let fresh = path(&d, "fresh.png");
    let o = run(PLOT, &[&bad, "-o", &fresh], b"");
    fails(&o, 1, &["bad.jsonl, line 2"]);
    let o = run(
        PLOT,
        &[&log, &log, "--labels", "only-one", "-o", &fresh],
        b"",
    );
    fails(&o, 2, &["--labels"]);
    assert!(!std::path::Path::new(&fresh).exists());
}

#[test]
fn row_labels_stand_left_of_their_rows() {
    // Four white 8x8 images in 2 rows: the grid is 22 x 22 (pad 2).
    let dir = tmp();
    let x = save(&dir, "white.npy", &[4, 1, 8, 8], |_| 1.0);
    let plain = png(&ok(RENDER, &[&x, "--cols", "2", "--range", "0,1"], b""));
    assert_eq!(plain.dimensions(), (22, 22));
    let args = [
        &x,
        "--cols",
        "2",
        "--range",
        "0,1",
        "--row-labels",
        "top;bottom",
    ];
    let labelled = png(&ok(RENDER, &args, b""));
    if !flowpipe::render::font::available() {
        assert_eq!(labelled, plain);
        return;
    }
    // A band on the left, the grid unchanged beside it.
    let band = labelled.width() - 22;
    assert!(
        band > 10 && labelled.height() == 22,
        "{:?}",
        labelled.dimensions()
    );
    for (x, y, p) in plain.enumerate_pixels() {
        assert_eq!(labelled.get_pixel(x + band, y), p);
    }
    // Ink in the band at each row's height (rows span y 2..10 and 12..20), none between them.
    let ink = |y0: u32, y1: u32| {
        (y0..y1).any(|y| (0..band).any(|x| labelled.get_pixel(x, y).0.iter().any(|&c| c < 128)))
    };
    assert!(ink(2, 10) && ink(12, 20));
    assert!(!ink(0, 1) && !ink(21, 22));
    // As many labels as rows, or an error naming the input and both counts.
    let out = path(&dir, "bad.png");
    let r = run(
        RENDER,
        &[&x, "--cols", "2", "--row-labels", "a;b;c", "-o", &out],
        b"",
    );
    fails(&r, 1, &["white.npy", "2 row labels", "found 3"]);
    assert!(!std::path::Path::new(&out).exists());
}
