package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// The provisioners compared.
const (
	Stickyvol = "stickyvol"
	Instant   = "instant"
)

// Pass is one provisioner's run through the StatefulSet scenario.
type Pass struct {
	Provisioner string `json:"provisioner"`
	Claims      int    `json:"claims"`
	Run         int    `json:"run"`
	// AllBoundSeconds: the StatefulSet created -> its last claim Bound.
	AllBoundSeconds float64 `json:"allBoundSeconds"`
	// DeletionSeconds: the StatefulSet and claims deleted -> the last PV
	// gone (and, for stickyvol, every volume directory removed).
	DeletionSeconds float64 `json:"deletionSeconds"`
	// Per-claim latencies, in milliseconds.
	SelectedToPV         Summary `json:"selectedToPVMs"`
	SelectedToAnnotation Summary `json:"selectedToAnnotationMs"`
	CreatedToBound       Summary `json:"createdToBoundMs"`
	// CPU time of all the provisioner's processes, per claim: from the
	// StatefulSet's creation to the last Bound, and during the deletion.
	CPUPerClaimMs       float64 `json:"cpuPerClaimMs"`
	DeleteCPUPerClaimMs float64 `json:"deleteCPUPerClaimMs"`
	// PeakRSSMiB is each process's peak RSS during the run (VmHWM).
	PeakRSSMiB map[string]float64 `json:"peakRSSMiB"`
	// SelectedToPVSamples are the per-claim latencies behind
	// SelectedToPV, for the chart.
	SelectedToPVSamples []float64 `json:"selectedToPVSamplesMs,omitempty"`
}

// Figures are the medians of one provisioner's runs at one claim count.
type Figures struct {
	Provisioner     string  `json:"provisioner"`
	Claims          int     `json:"claims"`
	Runs            int     `json:"runs"`
	AllBoundSeconds float64 `json:"allBoundSeconds"`
	// BoundRatio is AllBoundSeconds over the instant provisioner's at the
	// same claim count (0 when that is missing).
	BoundRatio              float64 `json:"boundRatio"`
	DeletionSeconds         float64 `json:"deletionSeconds"`
	SelectedToPV            Summary `json:"selectedToPVMs"`
	SelectedToAnnotationP50 float64 `json:"selectedToAnnotationP50Ms"`
	CreatedToBound          Summary `json:"createdToBoundMs"`
	CPUPerClaimMs           float64 `json:"cpuPerClaimMs"`
	DeleteCPUPerClaimMs     float64 `json:"deleteCPUPerClaimMs"`
	// PeakRSSMiB is the highest peak RSS of one process of the run.
	PeakRSSMiB float64 `json:"peakRSSMiB"`
	Processes  int     `json:"processes"`
}

// Memory is what the agents hold with many objects of other nodes in the
// cluster; each figure is the median over the agents.
type Memory struct {
	Objects int `json:"objects"`
	Agents  int `json:"agents"`
	// IdleRSSMiB: none of the objects there.
	IdleRSSMiB float64 `json:"idleRSSMiB"`
	// WatchedRSSMiB: after the objects were created while the agents ran.
	WatchedRSSMiB float64 `json:"watchedRSSMiB"`
	// RestartedRSSMiB: the agents restarted with the objects there, once
	// they have listed them: what a node pays after an upgrade or reboot.
	RestartedRSSMiB float64 `json:"restartedRSSMiB"`
	// SetupSeconds is the time it took to create the objects.
	SetupSeconds float64 `json:"setupSeconds"`
	// Quiet says whether the agents fell quiet before each reading.
	Quiet bool `json:"quiet"`
}

// Machine is where the figures come from.
type Machine struct {
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpuModel"`
	MemoryGi int    `json:"memoryGi"`
	Kernel   string `json:"kernel"`
}

// Results are everything one bench run found.
type Results struct {
	Started time.Time `json:"started"`
	// Version is the stickyvol source that was measured (git describe).
	Version   string  `json:"version"`
	Machine   Machine `json:"machine"`
	FakeNodes int     `json:"fakeNodes"`
	Claims    []int   `json:"claims"`
	// RunsPerScenario is how many runs each figure is the median of.
	RunsPerScenario int `json:"runsPerScenario"`
	// ControllerManagerQPS and ControllerManagerBurst are the client rate
	// limits of each of kube-controller-manager's controllers.
	ControllerManagerQPS   int       `json:"controllerManagerQPS"`
	ControllerManagerBurst int       `json:"controllerManagerBurst"`
	Runs                   []Pass    `json:"runs"`
	Figures                []Figures `json:"figures"`
	Memory                 *Memory   `json:"memory,omitempty"`
	// DriverPairsPerSecond is the driver's CreateVolume+DeleteVolume
	// pairs a second over its socket (make bench-driver), 0 if not run.
	DriverPairsPerSecond float64 `json:"driverPairsPerSecond,omitempty"`
}

// Summarize computes Figures from Runs: per provisioner and claim count,
// the median of each figure over the runs.
func (r *Results) Summarize() {
	type key struct {
		provisioner string
		claims      int
	}
	groups := map[key][]Pass{}
	var order []key
	for _, run := range r.Runs {
		k := key{run.Provisioner, run.Claims}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], run)
	}
	slices.SortStableFunc(order, func(a, b key) int {
		if a.claims != b.claims {
			return a.claims - b.claims
		}
		return provisionerRank(a.provisioner) - provisionerRank(b.provisioner)
	})
	r.Figures = nil
	for _, k := range order {
		r.Figures = append(r.Figures, medianFigures(k.provisioner, k.claims, groups[k]))
	}
	for i, f := range r.Figures {
		if base := r.Find(Instant, f.Claims); base != nil && base.AllBoundSeconds > 0 {
			r.Figures[i].BoundRatio = f.AllBoundSeconds / base.AllBoundSeconds
		}
	}
}

// provisionerRank puts the baseline first in tables.
func provisionerRank(p string) int {
	if p == Instant {
		return 0
	}
	return 1
}

func medianFigures(provisioner string, claims int, runs []Pass) Figures {
	of := func(get func(Pass) float64) float64 {
		values := make([]float64, len(runs))
		for i, run := range runs {
			values[i] = get(run)
		}
		return Median(values)
	}
	summaries := func(get func(Pass) Summary) Summary {
		s := make([]Summary, len(runs))
		for i, run := range runs {
			s[i] = get(run)
		}
		return MedianSummary(s)
	}
	return Figures{
		Provisioner:             provisioner,
		Claims:                  claims,
		Runs:                    len(runs),
		AllBoundSeconds:         of(func(r Pass) float64 { return r.AllBoundSeconds }),
		DeletionSeconds:         of(func(r Pass) float64 { return r.DeletionSeconds }),
		SelectedToPV:            summaries(func(r Pass) Summary { return r.SelectedToPV }),
		SelectedToAnnotationP50: of(func(r Pass) float64 { return r.SelectedToAnnotation.P50 }),
		CreatedToBound:          summaries(func(r Pass) Summary { return r.CreatedToBound }),
		CPUPerClaimMs:           of(func(r Pass) float64 { return r.CPUPerClaimMs }),
		DeleteCPUPerClaimMs:     of(func(r Pass) float64 { return r.DeleteCPUPerClaimMs }),
		PeakRSSMiB: of(func(r Pass) float64 {
			peak := 0.0
			for _, v := range r.PeakRSSMiB {
				peak = max(peak, v)
			}
			return peak
		}),
		Processes: len(runs[0].PeakRSSMiB),
	}
}

// Find returns the figures of a provisioner at a claim count, or nil.
func (r *Results) Find(provisioner string, claims int) *Figures {
	for i := range r.Figures {
		if r.Figures[i].Provisioner == provisioner && r.Figures[i].Claims == claims {
			return &r.Figures[i]
		}
	}
	return nil
}

// WriteJSON writes the results to path.
func (r *Results) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// ReadResults reads results WriteJSON wrote.
func ReadResults(path string) (*Results, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := &Results{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// PrintTable writes the figures as a table, then the context they need
// and, last, the summary line.
func (r *Results) PrintTable(w io.Writer) {
	fmt.Fprintf(w, "\n%d fake nodes, %s; median of %d runs each; stickyvol %s\n",
		r.FakeNodes, r.Machine, r.RunsPerScenario, r.Version)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "provisioner\tN\tall Bound\tratio\tselected-node->PV ms p50/p90/p99/max\tkcm-ann. p50 ms\tcreated->Bound ms p50/p99\tdeletion\tCPU ms/claim prov/delete\tpeak RSS MiB\t")
	for _, f := range r.Figures {
		fmt.Fprintf(tw, "%s\t%d\t%.1f s\t%.2f\t%.0f/%.0f/%.0f/%.0f\t%.0f\t%.0f/%.0f\t%.1f s\t%.1f/%.1f\t%.1f\t\n",
			f.Provisioner, f.Claims, f.AllBoundSeconds, f.BoundRatio,
			f.SelectedToPV.P50, f.SelectedToPV.P90, f.SelectedToPV.P99, f.SelectedToPV.Max,
			f.SelectedToAnnotationP50, f.CreatedToBound.P50, f.CreatedToBound.P99,
			f.DeletionSeconds, f.CPUPerClaimMs, f.DeleteCPUPerClaimMs, f.PeakRSSMiB)
	}
	tw.Flush()
	fmt.Fprintln(w, "Latencies are from the bench's own watch events (time.Now() as each arrives), so each includes the watch's delivery delay.")
	fmt.Fprintln(w, "kcm-ann.: selected-node -> kube-controller-manager's volume.kubernetes.io/storage-provisioner annotation, which the provisioning library waits for.")
	fmt.Fprintf(w, "CPU is utime+stime of all the provisioner's processes (%d agents, or the one instant process) per claim; peak RSS is the largest process's VmHWM.\n", r.FakeNodes)
	fmt.Fprintf(w, "kube-controller-manager: client QPS %d, burst %d, for each of its controllers.\n", r.ControllerManagerQPS, r.ControllerManagerBurst)
	if m := r.Memory; m != nil {
		fmt.Fprintf(w, "memory, %d PVs and %d claims of other nodes: agent RSS %.1f MiB idle without them, %.1f MiB once watched in, %.1f MiB after a restart (median of %d agents; took %.0fs to create",
			m.Objects, m.Objects, m.IdleRSSMiB, m.WatchedRSSMiB, m.RestartedRSSMiB, m.Agents, m.SetupSeconds)
		if !m.Quiet {
			fmt.Fprint(w, "; the agents were still busy at a reading")
		}
		fmt.Fprintln(w, ")")
	}
	if r.DriverPairsPerSecond > 0 {
		fmt.Fprintf(w, "driver: %.0f CreateVolume+DeleteVolume pairs/s over its socket (make bench-driver)\n", r.DriverPairsPerSecond)
	}
	fmt.Fprintln(w, r.LastLine())
}

// LastLine is the one-line summary for stickyvol at the first claim count:
//
//	bench: N=200 bound-ratio=R p50=X ms p99=Y ms cpu=Z ms/claim rss=W MiB rss10k=V MiB driver=P pairs/s
//
// with "n/a" (and no unit) for what was not measured.
func (r *Results) LastLine() string {
	n := 0
	if len(r.Claims) > 0 {
		n = r.Claims[0]
	}
	figure := func(v float64, format, unit string) string {
		if v <= 0 || math.IsNaN(v) {
			return "n/a"
		}
		return fmt.Sprintf(format, v) + unit
	}
	ratio, p50, p99, cpu, rss, rss10k := "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"
	if f := r.Find(Stickyvol, n); f != nil {
		ratio = figure(f.BoundRatio, "%.2f", "")
		p50 = figure(f.SelectedToPV.P50, "%.0f", " ms")
		p99 = figure(f.SelectedToPV.P99, "%.0f", " ms")
		cpu = figure(f.CPUPerClaimMs, "%.1f", " ms/claim")
		rss = figure(f.PeakRSSMiB, "%.1f", " MiB")
	}
	if r.Memory != nil {
		rss10k = figure(r.Memory.RestartedRSSMiB, "%.1f", " MiB")
	}
	return fmt.Sprintf("bench: N=%d bound-ratio=%s p50=%s p99=%s cpu=%s rss=%s rss10k=%s driver=%s",
		n, ratio, p50, p99, cpu, rss, rss10k, figure(r.DriverPairsPerSecond, "%.0f", " pairs/s"))
}

func (m Machine) String() string {
	return fmt.Sprintf("%d CPUs (%s), %d GiB, Linux %s", m.CPUs, m.CPUModel, m.MemoryGi, m.Kernel)
}

// driverBenchmark is the driver benchmark whose ops are one CreateVolume
// and one DeleteVolume (driver/bench_test.go).
const driverBenchmark = "BenchmarkCreateDeleteVolume"

// ParseDriverBench reads `go test -bench` output and returns the driver's
// CreateVolume+DeleteVolume pairs a second: one over the median ns/op of
// the BenchmarkCreateDeleteVolume lines (one a -count).
func ParseDriverBench(r io.Reader) (float64, error) {
	var nsPerOp []float64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || (f[0] != driverBenchmark && !strings.HasPrefix(f[0], driverBenchmark+"-")) {
			continue
		}
		for i := 2; i+1 < len(f); i++ {
			if f[i+1] != "ns/op" {
				continue
			}
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return 0, fmt.Errorf("%q: %w", sc.Text(), err)
			}
			nsPerOp = append(nsPerOp, v)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if len(nsPerOp) == 0 {
		return 0, fmt.Errorf("no %s result", driverBenchmark)
	}
	return float64(time.Second) / Median(nsPerOp), nil
}
