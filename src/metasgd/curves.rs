//! A run's curves as a PNG beside its log: the losses (training average and
//! validation, log scale) above, the learned rates (`rate.*` fields) below.
//!
//! Text needs a TrueType font: the first of a few usual system paths (or
//! `METASGD_PLOT_FONT`). Without one the curves are drawn without labels.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

/// Every `iter N key value …` line of a run log, as series by key.
pub fn series(log: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 2 || f[0] != "iter" {
            continue;
        }
        let Ok(it) = f[1].parse::<f64>() else { continue };
        for kv in f[2..].chunks(2) {
            if let [k, v] = kv {
                if let Ok(v) = v.parse::<f64>() {
                    if !k.ends_with("_per_s") && *k != "elapsed_s" && v.is_finite() {
                        out.entry(k.to_string()).or_default().push((it, v));
                    }
                }
            }
        }
    }
    out
}

fn font() -> bool {
    use std::sync::OnceLock;
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let mut paths: Vec<String> = std::env::var("METASGD_PLOT_FONT").into_iter().collect();
        paths.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/Library/Fonts/Arial.ttf",
            ]
            .map(String::from),
        );
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws the curves of `log` into `png`.
pub fn plot(log: &Path, png: &Path) -> anyhow::Result<()> {
    let s = series(&std::fs::read_to_string(log)?);
    let (losses, rates): (Vec<_>, Vec<_>) = s.iter().partition(|(k, _)| !k.starts_with("rate."));
    let text = font();
    let root = BitMapBackend::new(png, (900, if rates.is_empty() { 420 } else { 780 })).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = if rates.is_empty() {
        vec![root.clone()]
    } else {
        let (a, b) = root.split_vertically(420);
        vec![a, b]
    };
    panel(&areas[0], "loss", &losses, true, text)?;
    if let Some(a) = areas.get(1) {
        panel(a, "learned rates", &rates, false, text)?;
    }
    root.present()?;
    Ok(())
}

type Series<'a> = (&'a String, &'a Vec<(f64, f64)>);

fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    s: &[Series],
    log_y: bool,
    text: bool,
) -> anyhow::Result<()> {
    let pts = s.iter().flat_map(|(_, v)| v.iter());
    let (mut x1, mut y0, mut y1) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x1 = x1.max(x);
        if !log_y || y > 0.0 {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if !y0.is_finite() {
        return Ok(());
    }
    if y1 <= y0 {
        y1 = y0 + 1e-6_f64.max(y0.abs() * 0.1);
    }
    let mut b = ChartBuilder::on(area);
    b.margin(12);
    if text {
        b.caption(title, ("sans-serif", 18))
            .x_label_area_size(30)
            .y_label_area_size(60);
    }
    let colors = [
        BLUE,
        RED,
        GREEN,
        MAGENTA,
        CYAN,
        BLACK,
        RGBColor(255, 140, 0),
        RGBColor(128, 0, 128),
    ];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            let mut mesh = chart.configure_mesh();
            if !text {
                mesh.disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0);
            }
            mesh.light_line_style(TRANSPARENT)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.3}"))
                .x_desc("iteration")
                .draw()?;
            for (i, (name, v)) in s.iter().enumerate() {
                let c = colors[i % colors.len()];
                let series = chart.draw_series(LineSeries::new(
                    v.iter().copied().filter(|&(_, y)| !log_y || y > 0.0),
                    c.stroke_width(2),
                ))?;
                if text {
                    series
                        .label(name.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
                }
            }
            if text {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 13))
                    .draw()?;
            }
        }};
    }
    if log_y {
        draw!(b.build_cartesian_2d(0f64..x1, (y0 * 0.9..y1 * 1.1).log_scale())?);
    } else {
        let pad = (y1 - y0) * 0.05;
        draw!(b.build_cartesian_2d(0f64..x1, y0 - pad..y1 + pad)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_reads_every_numeric_field_but_times() {
        let log = "config {}\niter 10 train_loss_ema 0.5 val_loss 0.4 rate.alpha 0.01 elapsed_s 3 tasks_per_s 9\nresumed at iteration 10\niter 20 train_loss_ema 0.3 val_loss 0.2 rate.alpha 0.02 elapsed_s 6 tasks_per_s 9\n";
        let s = series(log);
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            ["rate.alpha", "train_loss_ema", "val_loss"]
        );
        assert_eq!(s["val_loss"], vec![(10.0, 0.4), (20.0, 0.2)]);
    }

    #[test]
    fn plot_writes_a_png() {
        let dir = std::env::temp_dir().join(format!("metasgd-curves-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("train.log");
        std::fs::write(
            &log,
            "iter 1 train_loss_ema 1.0 val_loss 0.9 rate.a 0.1\niter 2 train_loss_ema 0.5 val_loss 0.6 rate.a 0.2\n",
        )
        .unwrap();
        let png = dir.join("train.png");
        plot(&log, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
