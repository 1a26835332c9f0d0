package bench

import (
	"math"
	"testing"
)

func TestPercentile(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1) // 1..100
	}
	for _, tc := range []struct {
		sorted []float64
		p      float64
		want   float64
	}{
		{hundred, 50, 50},
		{hundred, 90, 90},
		{hundred, 99, 99},
		{hundred, 100, 100},
		{hundred, 0.5, 1},
		{[]float64{7}, 50, 7},
		{[]float64{7}, 99, 7},
		{[]float64{1, 2, 3, 4}, 50, 2},
		{[]float64{1, 2, 3, 4}, 51, 3},
		{[]float64{10, 20, 30}, 99, 30},
	} {
		if got := Percentile(tc.sorted, tc.p); got != tc.want {
			t.Errorf("Percentile(%v..., %v) = %v, want %v", tc.sorted[0], tc.p, got, tc.want)
		}
	}
	if got := Percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("Percentile of nothing = %v, want NaN", got)
	}
}

func TestSummarize(t *testing.T) {
	// 200 claims: 197 fast, three slow. Nearest rank: p99 is the 198th
	// smallest, the first slow one.
	samples := make([]float64, 0, 200)
	for i := range 197 {
		samples = append(samples, float64(10+i%5))
	}
	samples = append(samples, 900, 250, 300)
	got := Summarize(samples)
	want := Summary{Count: 200, P50: 12, P90: 14, P99: 250, Max: 900}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
	if got := Summarize(nil); got != (Summary{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", got)
	}
	// The input is left as it was.
	if samples[197] != 900 {
		t.Error("Summarize sorted its input")
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		values []float64
		want   float64
	}{
		{[]float64{3}, 3},
		{[]float64{16.1, 10.6, 12.0}, 12.0},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{5, 5, 100}, 5},
	} {
		if got := Median(tc.values); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.values, got, tc.want)
		}
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("Median of nothing is not NaN")
	}
	runs := []Summary{
		{Count: 200, P50: 10, P90: 20, P99: 30, Max: 40},
		{Count: 200, P50: 12, P90: 25, P99: 90, Max: 400},
		{Count: 200, P50: 11, P90: 21, P99: 31, Max: 41},
	}
	if got, want := MedianSummary(runs), (Summary{Count: 200, P50: 11, P90: 21, P99: 31, Max: 41}); got != want {
		t.Errorf("MedianSummary = %+v, want %+v", got, want)
	}
}
