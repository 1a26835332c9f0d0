package conformance

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"
)

// WriteSelection writes how many specs were selected per storage test suite,
// for a dry run, in which every selected spec "passes" without running.
func WriteSelection(w io.Writer, r *Report) {
	bySuite := map[string]int{}
	for _, s := range r.Specs {
		bySuite[cmp.Or(s.Suite, "(other)")]++
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SUITE\tSPECS\t")
	for _, name := range slices.Sorted(maps.Keys(bySuite)) {
		fmt.Fprintf(tw, "%s\t%d\t\n", name, bySuite[name])
	}
	fmt.Fprintf(tw, "total\t%d\t\n", len(r.Specs))
	tw.Flush()
}

// WriteSuiteTable writes, per storage test suite, how many specs were
// selected, passed, skipped and failed, with a total line.
func WriteSuiteTable(w io.Writer, r *Report) {
	bySuite := map[string]*Counts{}
	var names []string
	for _, s := range r.Specs {
		name := cmp.Or(s.Suite, "(other)")
		c := bySuite[name]
		if c == nil {
			c = &Counts{}
			bySuite[name] = c
			names = append(names, name)
		}
		c.add(s)
	}
	slices.Sort(names)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SUITE\tSELECTED\tPASSED\tSKIPPED\tFAILED\t")
	for _, name := range names {
		c := bySuite[name]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t\n", name, c.Selected, c.Passed, c.Skipped, c.Failed)
	}
	t := r.Counts()
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t%d\t\n", t.Selected, t.Passed, t.Skipped, t.Failed)
	tw.Flush()
}

// WriteSummary writes what a person reading a run wants first: the counts,
// a table by storage test suite (for the e2e suites), the skips grouped by
// reason, each failure's name and reason, and the time.
func WriteSummary(w io.Writer, title string, r *Report, took time.Duration) {
	c := r.Counts()
	fmt.Fprintf(w, "=== %s: %d passed, %d skipped, %d failed of %d selected (%d left out by focus and skip, %d pending) in %s\n",
		title, c.Passed, c.Skipped, c.Failed, c.Selected, r.NotSelected, r.Pending, took.Round(100*time.Millisecond))
	for _, s := range r.Setup {
		fmt.Fprintf(w, "suite %s %s: %s\n", s.Name, s.State, s.Reason)
	}
	if slices.ContainsFunc(r.Specs, func(s Spec) bool { return s.Suite != "" }) {
		WriteSuiteTable(w, r)
	}

	reasons := map[string]int{}
	var order []string
	for _, s := range r.Specs {
		if s.State != StateSkipped {
			continue
		}
		if reasons[s.Reason] == 0 {
			order = append(order, s.Reason)
		}
		reasons[s.Reason]++
	}
	if len(order) > 0 {
		fmt.Fprintln(w, "skipped, by reason:")
		slices.SortStableFunc(order, func(a, b string) int { return reasons[b] - reasons[a] })
		for _, reason := range order {
			fmt.Fprintf(w, "  %3d  %s\n", reasons[reason], reason)
		}
	}
	if c.Failed > 0 {
		fmt.Fprintln(w, "failed:")
		for _, s := range r.Specs {
			if s.Failed() {
				fmt.Fprintf(w, "  [%s] %s\n        %s (after %s)\n", s.State, s.Name, s.Reason, s.Time.Round(time.Second))
			}
		}
	}
}
