package bench

import (
	"errors"
	"fmt"
	"image/color"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Colours of the provisioners in the chart.
var provisionerColors = map[string]color.Color{
	Instant:   color.RGBA{R: 0x88, G: 0x88, B: 0x88, A: 0xff},
	Stickyvol: color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
}

// WriteChart draws the results as a PNG at path: on the left, the
// distribution of selected-node -> PV latencies of each provisioner at the
// first claim count (all runs pooled, as the share of claims at or below
// each latency); on the right, the all-Bound time against the claim count.
func WriteChart(path string, r *Results) error {
	if len(r.Claims) == 0 || len(r.Figures) == 0 {
		return errors.New("no figures to chart")
	}
	latency, err := latencyPlot(r, r.Claims[0])
	if err != nil {
		return err
	}
	bound, err := boundPlot(r)
	if err != nil {
		return err
	}
	img := vgimg.New(26*vg.Centimeter, 10*vg.Centimeter)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter,
		PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	canvases := plot.Align([][]*plot.Plot{{latency, bound}}, tiles, dc)
	latency.Draw(canvases[0][0])
	bound.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// latencyPlot is the empirical distribution function of each provisioner's
// selected-node -> PV latencies at n claims.
func latencyPlot(r *Results, n int) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("selected-node -> PV created, N=%d", n)
	p.X.Label.Text = "latency (ms, log scale)"
	p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	p.Y.Label.Text = "share of claims"
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top, p.Legend.Left = false, false
	p.Add(plotter.NewGrid())
	for _, prov := range []string{Instant, Stickyvol} {
		var samples []float64
		for _, run := range r.Runs {
			if run.Provisioner == prov && run.Claims == n {
				samples = append(samples, run.SelectedToPVSamples...)
			}
		}
		if len(samples) == 0 {
			continue
		}
		line, err := plotter.NewLine(cdf(samples))
		if err != nil {
			return nil, err
		}
		line.Color = provisionerColors[prov]
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(prov, line)
	}
	return p, nil
}

// cdf gives, for each sample in order, the share of samples at or below it.
// Samples below minLatency are drawn at it: the log scale has no zero, and
// the claim and PV watches are separate streams, so a PV's event may beat
// the claim's by a hair.
func cdf(samples []float64) plotter.XYs {
	sorted := slices.Sorted(slices.Values(samples))
	xys := make(plotter.XYs, len(sorted))
	for i, v := range sorted {
		xys[i].X, xys[i].Y = max(v, minLatency), float64(i+1)/float64(len(sorted))
	}
	return xys
}

// minLatency is the left end of the latency axis, in milliseconds.
const minLatency = 0.1

// boundPlot is each provisioner's median all-Bound time against the claim
// count.
func boundPlot(r *Results) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "all claims Bound (median of runs)"
	p.X.Label.Text = "claims (N)"
	p.Y.Label.Text = "seconds"
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	for _, prov := range []string{Instant, Stickyvol} {
		var xys plotter.XYs
		for _, f := range r.Figures {
			if f.Provisioner == prov {
				xys = append(xys, plotter.XY{X: float64(f.Claims), Y: f.AllBoundSeconds})
			}
		}
		if len(xys) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, err
		}
		line.Color, points.Color = provisionerColors[prov], provisionerColors[prov]
		points.Shape = draw.CircleGlyph{}
		p.Add(line, points)
		p.Legend.Add(prov, line, points)
	}
	return p, nil
}
