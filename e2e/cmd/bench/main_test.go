package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stickyvol/stickyvol/e2e/bench"
)

func TestParseCounts(t *testing.T) {
	for in, want := range map[string][]int{"200": {200}, "200,1000": {200, 1000}, " 20 , 100": {20, 100}} {
		if got, err := parseCounts(in); err != nil || !slices.Equal(got, want) {
			t.Errorf("parseCounts(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-5", "200,", "two"} {
		if got, err := parseCounts(bad); err == nil {
			t.Errorf("parseCounts(%q) = %v, want an error", bad, got)
		}
	}
}

// TestReport adds a driver benchmark to saved results: the file gets the
// figure, and the printout ends with the summary line that has it.
func TestReport(t *testing.T) {
	dir := t.TempDir()
	res := &bench.Results{Claims: []int{200}, Runs: []bench.Pass{{Provisioner: bench.Instant, Claims: 200, Run: 1, AllBoundSeconds: 10}}}
	res.Summarize()
	if err := res.WriteJSON(filepath.Join(dir, "results.json")); err != nil {
		t.Fatal(err)
	}
	driver := filepath.Join(dir, "bench.txt")
	out := "BenchmarkCreateDeleteVolume-2   \t     500\t   2000000 ns/op\t   500.0 ops/s\n"
	if err := os.WriteFile(driver, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	var printed strings.Builder
	if err := report([]string{"--results", dir, "--driver-bench", driver}, &printed); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(printed.String()), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "bench: N=200 ") || !strings.HasSuffix(last, " driver=500 pairs/s") {
		t.Errorf("last line %q, want the summary line with driver=500 pairs/s", last)
	}
	saved, err := bench.ReadResults(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if saved.DriverPairsPerSecond != 500 {
		t.Errorf("saved driver figure %v, want 500", saved.DriverPairsPerSecond)
	}
}
