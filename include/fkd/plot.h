// Torch-free charts for reports: a self-contained SVG line chart (e.g. test accuracy against
// wall-clock time for several training runs) and "nice" axis ticks. Write them to files with
// write_file_durably (file_io.h).
#pragma once
#include <string>
#include <vector>

namespace fkd {

/// One line of a chart: point i is (x[i], y[i]), drawn in the given order.
struct PlotSeries {
  std::string name;          ///< shown in the legend
  std::vector<double> x, y;  ///< same length; points with a non-finite coordinate are skipped
};

struct PlotOptions {
  std::string title;    ///< above the plot; empty: none
  std::string x_label;  ///< below the x axis; empty: none
  std::string y_label;  ///< left of the y axis, rotated; empty: none
  int width = 720;      ///< pixels
  int height = 440;     ///< pixels
};

/// A self-contained SVG line chart: one polyline and point markers per series in distinct
/// colours, a legend right of the plot, axes with "nice" ticks (nice_ticks), tick labels,
/// grid lines and axis labels. The y range is fitted to the data with a small pad (not forced
/// to 0, but not padded across 0 either); the x range starts at 0 if all x >= 0. Text is
/// XML-escaped (control characters become spaces). The result starts with "<svg" and ends
/// with "</svg>\n". ConfigError if a series has x and y of different lengths, if no series has
/// a finite point, or if the size leaves no room for the plot.
std::string render_line_plot_svg(const std::vector<PlotSeries>& series, const PlotOptions& opts);

/// "Nice" axis ticks covering [lo, hi] (first <= lo, last >= hi, up to rounding): about
/// `target` (clamped to [2, 100]) evenly spaced multiples of a step 1, 2 or 5 x 10^k, ascending,
/// at least two. lo > hi is swapped; lo == hi is widened by 10% of |lo| (or 1 at 0) each way.
/// Pure; ConfigError if lo or hi is not finite.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

}  // namespace fkd
