package bench

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func testResults() *Results {
	run := func(p string, n, i int, bound, p50, cpu, rss float64) Pass {
		return Pass{Provisioner: p, Claims: n, Run: i, AllBoundSeconds: bound, DeletionSeconds: bound / 2,
			SelectedToPV:        Summary{Count: n, P50: p50, P90: 2 * p50, P99: 4 * p50, Max: 8 * p50},
			CreatedToBound:      Summary{Count: n, P50: 1000, P99: 2000},
			CPUPerClaimMs:       cpu,
			PeakRSSMiB:          map[string]float64{"a": rss, "b": rss - 1},
			SelectedToPVSamples: []float64{p50, 2 * p50},
		}
	}
	r := &Results{
		Started: time.Date(2026, 9, 1, 12, 0, 0, 0, time.UTC), Version: "v0.1.0-3-gabc",
		Machine:   Machine{CPUs: 2, CPUModel: "Test CPU", MemoryGi: 24, Kernel: "6.1.0"},
		FakeNodes: 5, Claims: []int{200}, RunsPerScenario: 3,
		ControllerManagerQPS: 100, ControllerManagerBurst: 200,
		Runs: []Pass{
			run(Stickyvol, 200, 1, 16.1, 2800, 24, 53),
			run(Instant, 200, 1, 10.6, 16, 3, 31),
			run(Stickyvol, 200, 2, 17.0, 3000, 25, 54),
			run(Instant, 200, 2, 11.0, 18, 3.5, 30),
			run(Stickyvol, 200, 3, 15.9, 2700, 23, 52),
			run(Instant, 200, 3, 10.0, 15, 2.5, 32),
		},
		Memory:               &Memory{Objects: 10000, Agents: 5, IdleRSSMiB: 45, WatchedRSSMiB: 130, RestartedRSSMiB: 128, Quiet: true},
		DriverPairsPerSecond: 219.3,
	}
	r.Summarize()
	return r
}

func TestSummarizeRuns(t *testing.T) {
	r := testResults()
	if len(r.Figures) != 2 || r.Figures[0].Provisioner != Instant || r.Figures[1].Provisioner != Stickyvol {
		t.Fatalf("figures %+v, want instant then stickyvol", r.Figures)
	}
	sv := r.Find(Stickyvol, 200)
	if sv.AllBoundSeconds != 16.1 || sv.SelectedToPV.P50 != 2800 || sv.CPUPerClaimMs != 24 || sv.PeakRSSMiB != 53 || sv.Runs != 3 || sv.Processes != 2 {
		t.Errorf("stickyvol figures %+v: want the medians 16.1 s, 2800 ms, 24 ms, 53 MiB of 3 runs of 2 processes", sv)
	}
	if want := 16.1 / 10.6; math.Abs(sv.BoundRatio-want) > 1e-9 {
		t.Errorf("bound ratio %v, want %v", sv.BoundRatio, want)
	}
	if got := r.Find(Instant, 200).BoundRatio; got != 1 {
		t.Errorf("the baseline's ratio to itself is %v", got)
	}
	if r.Find(Stickyvol, 1000) != nil {
		t.Error("figures for a claim count that did not run")
	}
}

func TestLastLine(t *testing.T) {
	r := testResults()
	want := "bench: N=200 bound-ratio=1.52 p50=2800 ms p99=11200 ms cpu=24.0 ms/claim rss=53.0 MiB rss10k=128.0 MiB driver=219 pairs/s"
	if got := r.LastLine(); got != want {
		t.Errorf("LastLine:\n got %s\nwant %s", got, want)
	}
	shape := regexp.MustCompile(`^bench: N=\d+ bound-ratio=\S+ p50=\S+( ms)? p99=\S+( ms)? cpu=\S+( ms/claim)? rss=\S+( MiB)? rss10k=\S+( MiB)? driver=\S+( pairs/s)?$`)
	if !shape.MatchString(want) {
		t.Fatal("the wanted line does not have the documented shape")
	}

	r.Memory, r.DriverPairsPerSecond = nil, 0
	got := r.LastLine()
	if !strings.HasSuffix(got, " rss10k=n/a driver=n/a") || !shape.MatchString(got) {
		t.Errorf("without memory and driver figures: %s", got)
	}
	empty := (&Results{Claims: []int{1000}}).LastLine()
	if want := "bench: N=1000 bound-ratio=n/a p50=n/a p99=n/a cpu=n/a rss=n/a rss10k=n/a driver=n/a"; empty != want {
		t.Errorf("no figures at all:\n got %s\nwant %s", empty, want)
	}

	var table strings.Builder
	testResults().PrintTable(&table)
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if lines[len(lines)-1] != testResults().LastLine() {
		t.Errorf("the table does not end with the summary line:\n%s", table.String())
	}
	if !strings.Contains(table.String(), "client QPS 100, burst 200") {
		t.Errorf("the table does not state kube-controller-manager's QPS:\n%s", table.String())
	}
}

func TestResultsJSONRoundTrip(t *testing.T) {
	r := testResults()
	path := filepath.Join(t.TempDir(), "results.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadResults(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, back); diff != "" {
		t.Errorf("results after a JSON round trip (-wrote +read):\n%s", diff)
	}
}

func TestParseDriverBench(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/stickyvol/stickyvol/driver
cpu: Test CPU
BenchmarkCreateDeleteVolume-2   	     261	   4560000 ns/op	       219.3 ops/s	   41234 B/op	     512 allocs/op
BenchmarkCreateDeleteVolume-2   	     250	   5000000 ns/op	       200.0 ops/s	   41234 B/op	     512 allocs/op
BenchmarkCreateDeleteVolume-2   	     270	   4000000 ns/op	       250.0 ops/s	   41234 B/op	     512 allocs/op
BenchmarkPublishUnpublish-2     	    1000	   1000000 ns/op	      1000 ops/s
PASS
`
	got, err := ParseDriverBench(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if want := 1e9 / 4560000.0; got != want {
		t.Errorf("pairs/s = %v, want %v (one over the median ns/op)", got, want)
	}
	if _, err := ParseDriverBench(strings.NewReader("PASS\n")); err == nil {
		t.Error("no benchmark lines: no error")
	}
}

func TestWriteChart(t *testing.T) {
	r := testResults()
	// A second claim count, so the right panel has a line.
	for _, run := range slices.Clone(r.Runs) {
		run.Claims, run.AllBoundSeconds = 1000, run.AllBoundSeconds*6
		r.Runs = append(r.Runs, run)
	}
	r.Claims = append(r.Claims, 1000)
	r.Summarize()
	path := filepath.Join(t.TempDir(), "chart.png")
	if err := WriteChart(path, r); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("%s is not a PNG", path)
	}
	if err := WriteChart(path, &Results{}); err == nil {
		t.Error("a chart of no figures: no error")
	}
}
