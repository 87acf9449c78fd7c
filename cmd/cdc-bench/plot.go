package main

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"log"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// plotLatency draws p50 and p99 commit→visible latency against the offered
// load of the latency runs into a PNG beside the results (-plot), with the
// standard library only: two polylines on a log-scaled load axis, grid
// lines, and labels in a tiny built-in bitmap font.
func (b *bench) plotLatency() error {
	if b.cfg.plotPath == "" || len(b.res.Latency) == 0 {
		return nil
	}
	img := image.NewRGBA(image.Rect(0, 0, plotW, plotH))
	fill(img, img.Bounds(), color.White)
	runs := b.res.Latency
	lo, hi := runs[0].OfferedRate, runs[0].OfferedRate
	top := 100.0
	for _, r := range runs {
		lo, hi = math.Min(lo, r.OfferedRate), math.Max(hi, r.OfferedRate)
		top = math.Max(top, r.P99ms)
	}
	top = niceCeil(top)
	if hi <= lo {
		hi = lo * 2
	}
	x := func(rate float64) int {
		return plotLeft + int(float64(plotW-plotLeft-plotRight)*math.Log(rate/lo)/math.Log(hi/lo))
	}
	y := func(ms float64) int { return plotH - plotBottom - int(float64(plotH-plotTop-plotBottom)*ms/top) }
	grey := color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
	for i := 0; i <= 4; i++ {
		ms := top * float64(i) / 4
		line(img, plotLeft, y(ms), plotW-plotRight, y(ms), grey)
		text(img, 4, y(ms)-5, fmt.Sprintf("%.0f", ms), color.Black)
	}
	for _, r := range runs {
		line(img, x(r.OfferedRate), plotTop, x(r.OfferedRate), plotH-plotBottom, grey)
		text(img, x(r.OfferedRate)-12, plotH-plotBottom+8, fmt.Sprintf("%.0f", r.OfferedRate), color.Black)
	}
	text(img, 4, plotTop-22, "ms", color.Black)
	text(img, plotW-plotRight-70, plotH-20, "rows/s", color.Black)
	series := []struct {
		name string
		c    color.RGBA
		v    func(latencyRun) float64
	}{
		{"p50", color.RGBA{0x1f, 0x77, 0xb4, 0xff}, func(r latencyRun) float64 { return r.P50ms }},
		{"p99", color.RGBA{0xd6, 0x27, 0x28, 0xff}, func(r latencyRun) float64 { return r.P99ms }},
	}
	for i, s := range series {
		for j, r := range runs {
			px, py := x(r.OfferedRate), y(s.v(r))
			fill(img, image.Rect(px-3, py-3, px+4, py+4), s.c)
			if j > 0 {
				thickLine(img, x(runs[j-1].OfferedRate), y(s.v(runs[j-1])), px, py, s.c)
			}
		}
		lx := plotLeft + 20 + 90*i
		fill(img, image.Rect(lx, plotTop-18, lx+16, plotTop-12), s.c)
		text(img, lx+22, plotTop-22, s.name, color.Black)
	}
	if err := os.MkdirAll(filepath.Dir(b.cfg.plotPath), 0o755); err != nil {
		return err
	}
	f, err := os.Create(b.cfg.plotPath)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", b.cfg.plotPath, err)
	}
	log.Printf("wrote %s", b.cfg.plotPath)
	return f.Close()
}

const (
	plotW, plotH                             = 640, 400
	plotLeft, plotRight, plotTop, plotBottom = 60, 30, 40, 40
)

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.Set(x, y, c)
		}
	}
}

// line draws a one-pixel line (DDA: enough for a chart).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	n := max(abs(x1-x0), abs(y1-y0), 1)
	for i := 0; i <= n; i++ {
		img.Set(x0+(x1-x0)*i/n, y0+(y1-y0)*i/n, c)
	}
}

func thickLine(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	for d := -1; d <= 1; d++ {
		line(img, x0, y0+d, x1, y1+d, c)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

// glyphs is a 3×5 bitmap font for the few characters the chart writes,
// each row three bits, drawn at twice the size.
var glyphs = map[rune][5]string{
	'0': {"###", "#.#", "#.#", "#.#", "###"}, '1': {".#.", "##.", ".#.", ".#.", "###"},
	'2': {"###", "..#", "###", "#..", "###"}, '3': {"###", "..#", "###", "..#", "###"},
	'4': {"#.#", "#.#", "###", "..#", "..#"}, '5': {"###", "#..", "###", "..#", "###"},
	'6': {"###", "#..", "###", "#.#", "###"}, '7': {"###", "..#", "..#", "..#", "..#"},
	'8': {"###", "#.#", "###", "#.#", "###"}, '9': {"###", "#.#", "###", "..#", "###"},
	'p': {"###", "#.#", "###", "#..", "#.."}, 'm': {"...", "###", "###", "#.#", "#.#"},
	's': {".##", "#..", ".#.", "..#", "##."}, 'r': {"...", "##.", "#.#", "#..", "#.."},
	'o': {"...", "###", "#.#", "#.#", "###"}, 'w': {"...", "#.#", "#.#", "###", "###"},
	'/': {"..#", "..#", ".#.", "#..", "#.."}, ' ': {"...", "...", "...", "...", "..."},
}

// text writes s with its top left corner at (x, y); characters without a
// glyph are left out.
func text(img *image.RGBA, x, y int, s string, c color.Color) {
	const scale = 2
	for _, ch := range strings.ToLower(s) {
		g, ok := glyphs[ch]
		if !ok {
			continue
		}
		for row, bits := range g {
			for col, bit := range bits {
				if bit == '#' {
					fill(img, image.Rect(x+col*scale, y+row*scale, x+(col+1)*scale, y+(row+1)*scale), c)
				}
			}
		}
		x += 4 * scale
	}
}
