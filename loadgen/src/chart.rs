//! Small self-contained SVG line charts: the latency percentile distribution (HdrHistogram's
//! classic plot, x = 1/(1-percentile) on a log scale) and throughput over time. Several series
//! may share one chart, so a report can overlay ringwire and its baselines.

use std::fmt::Write as _;

/// A named series of (x, y) points.
pub type Series<'a> = (&'a str, &'a [(f64, f64)]);

/// Latency by percentile; points are (percentile 0..=100, value). The value axis is
/// logarithmic, so that medians of a few microseconds and millisecond tails both read.
pub fn percentiles(series: &[Series<'_>], y_label: &str) -> String {
    // Map a percentile to log10(1/(1-p)), capped at 10^5 (99.999 %).
    let x_of = |p: f64| {
        let rest = (1.0 - p / 100.0).max(1e-5);
        (1.0 / rest).log10()
    };
    let mapped: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, pts)| {
            (
                name.to_string(),
                pts.iter().map(|&(p, v)| (x_of(p), v)).collect(),
            )
        })
        .collect();
    let ticks = [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ];
    plot(&mapped, (0.0, 5.0), &ticks, "percentile", y_label, true)
}

/// A value over time; points are (seconds, value).
pub fn timeline(series: &[Series<'_>], y_label: &str) -> String {
    let mapped: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, pts)| (name.to_string(), pts.to_vec()))
        .collect();
    let x_max = mapped
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold(1.0f64, f64::max);
    let step = nice_step(x_max / 6.0);
    let labels: Vec<(f64, String)> = (0..)
        .map(|i| i as f64 * step)
        .take_while(|&x| x <= x_max + 1e-9)
        .map(|x| (x, format!("{x}s")))
        .collect();
    let ticks: Vec<(f64, &str)> = labels.iter().map(|(x, s)| (*x, s.as_str())).collect();
    plot(&mapped, (0.0, x_max), &ticks, "time", y_label, false)
}

fn plot(
    series: &[(String, Vec<(f64, f64)>)],
    (x_min, x_max): (f64, f64),
    x_ticks: &[(f64, &str)],
    x_label: &str,
    y_label: &str,
    log_y: bool,
) -> String {
    let values = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
            .filter(|y| y.is_finite() && (!log_y || *y > 0.0))
    };
    let y_top = values().fold(0.0f64, f64::max);
    // Gridlines: multiples of a round step, or whole decades on a log axis.
    let (y_min, y_max, grid): (f64, f64, Vec<f64>) = if log_y {
        let low = values().fold(f64::INFINITY, f64::min);
        let low = if low.is_finite() {
            low.log10().floor()
        } else {
            0.0
        };
        let high = y_top.max(1e-9).log10().ceil().max(low + 1.0);
        let decades = (low as i32..=high as i32).map(|d| 10f64.powi(d)).collect();
        (10f64.powf(low), 10f64.powf(high), decades)
    } else {
        let step = nice_step(y_top.max(1e-9) / 5.0);
        let top = (y_top / step).ceil().max(1.0) * step;
        let lines = (0..)
            .map(|i| i as f64 * step)
            .take_while(|y| *y <= top + step * 1e-6);
        (0.0, top, lines.collect())
    };
    let px = |x: f64| LEFT + (x - x_min) / (x_max - x_min).max(1e-12) * PLOT_W;
    let py = |y: f64| {
        let share = if log_y {
            (y.max(y_min).log10() - y_min.log10()) / (y_max.log10() - y_min.log10())
        } else {
            y / y_max
        };
        TOP + PLOT_H - share * PLOT_H
    };

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"##,
        W = LEFT + PLOT_W + RIGHT,
        H = TOP + PLOT_H + BOTTOM,
    );
    // Grid and axis labels.
    for &y in &grid {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{x2}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            yy = py(y),
            x2 = LEFT + PLOT_W,
            tx = LEFT - 6.0,
            ty = py(y) + 4.0,
            label = format_value(y),
        );
    }
    for &(x, label) in x_ticks {
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{y2}" stroke="#ddd"/><text x="{xx:.1}" y="{ty}" text-anchor="middle">{label}</text>"##,
            xx = px(x),
            y2 = TOP + PLOT_H,
            ty = TOP + PLOT_H + 18.0,
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#444"/>
<text x="{cx}" y="{by}" text-anchor="middle">{x_label}</text>
<text x="16" y="{cy}" text-anchor="middle" transform="rotate(-90 16 {cy})">{y_label}</text>"##,
        cx = LEFT + PLOT_W / 2.0,
        by = TOP + PLOT_H + 38.0,
        cy = TOP + PLOT_H / 2.0,
    );
    // Series and legend.
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
        let ly = TOP + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{lx}" y1="{ly}" x2="{lx2}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{tx}" y="{ty}">{name}</text>"##,
            lx = LEFT + 12.0,
            lx2 = LEFT + 32.0,
            tx = LEFT + 38.0,
            ty = ly + 4.0,
            name = escape(name),
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn format_value(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;
const PLOT_W: f64 = 640.0;
const PLOT_H: f64 = 320.0;
const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1200.0), 2000.0);
    }

    #[test]
    fn a_chart_has_one_polyline_per_series() {
        let a = [(0.0, 1.0), (50.0, 2.0), (99.0, 9.0)];
        let b = [(0.0, 2.0), (99.9, 3.0)];
        let svg = percentiles(&[("a", &a), ("b<c", &b)], "µs");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("b&lt;c"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
