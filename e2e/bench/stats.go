package bench

import (
	"math"
	"slices"
	"time"
)

// Summary is a latency distribution in milliseconds.
type Summary struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// Summarize gives the distribution of samples (milliseconds): nearest-rank
// percentiles, so that every figure is a latency some claim really had.
func Summarize(samples []float64) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	sorted := slices.Sorted(slices.Values(samples))
	return Summary{
		Count: len(sorted),
		P50:   Percentile(sorted, 50),
		P90:   Percentile(sorted, 90),
		P99:   Percentile(sorted, 99),
		Max:   sorted[len(sorted)-1],
	}
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted
// samples: the smallest sample that at least p% of all are at or below. It
// is NaN for no samples.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// Median is the middle of values, or the mean of the two middle ones for an
// even count; NaN for none. The figures of several runs are reported as
// their median, which one disturbed run cannot move far.
func Median(values []float64) float64 {
	if len(values) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(values))
	mid := len(s) / 2
	if len(s)%2 == 1 {
		return s[mid]
	}
	return (s[mid-1] + s[mid]) / 2
}

// MedianSummary is, field by field, the median of several runs' summaries.
func MedianSummary(runs []Summary) Summary {
	field := func(get func(Summary) float64) float64 {
		values := make([]float64, len(runs))
		for i, s := range runs {
			values[i] = get(s)
		}
		return Median(values)
	}
	return Summary{
		Count: int(field(func(s Summary) float64 { return float64(s.Count) })),
		P50:   field(func(s Summary) float64 { return s.P50 }),
		P90:   field(func(s Summary) float64 { return s.P90 }),
		P99:   field(func(s Summary) float64 { return s.P99 }),
		Max:   field(func(s Summary) float64 { return s.Max }),
	}
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// mib is a size in bytes in MiB.
func mib(bytes uint64) float64 { return float64(bytes) / (1 << 20) }
