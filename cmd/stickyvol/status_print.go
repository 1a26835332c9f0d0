package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/yaml"
)

// statusPrinter writes rows in one of the -o formats.
type statusPrinter struct {
	w      io.Writer
	format string
	now    time.Time
}

func newStatusPrinter(w io.Writer, format string, now time.Time) *statusPrinter {
	return &statusPrinter{w: w, format: format, now: now}
}

// statusList is the document -o json and -o yaml print for a whole list.
type statusList struct {
	Items []volumeStatus `json:"items"`
	// Nodes are the agents' findings; absent with --agents=false.
	Nodes []nodeFindings `json:"nodes,omitempty"`
}

// print writes rows and, after them, what the agents found on the nodes.
// first is true for the whole list and false for the rows --watch prints as
// they change: tables then print no header, json one object per line and
// yaml one document per row, as kubectl get -w does, and nodes is not
// printed.
func (p *statusPrinter) print(rows []volumeStatus, nodes []nodeFindings, first bool) error {
	switch p.format {
	case "json":
		if first {
			return p.json(statusList{Items: nonNil(rows), Nodes: nodes}, "  ")
		}
		for i := range rows {
			if err := p.json(rows[i], ""); err != nil {
				return err
			}
		}
		return nil
	case "yaml":
		if first {
			return p.yaml(statusList{Items: nonNil(rows), Nodes: nodes})
		}
		for i := range rows {
			if err := p.yaml(rows[i]); err != nil {
				return err
			}
		}
		return nil
	default:
		if err := p.table(rows, first); err != nil {
			return err
		}
		if first {
			return p.findingsTable(nodes)
		}
		return nil
	}
}

// nonNil keeps an empty list "items": [] rather than null.
func nonNil(rows []volumeStatus) []volumeStatus {
	if rows == nil {
		return []volumeStatus{}
	}
	return rows
}

func (p *statusPrinter) json(v any, indent string) error {
	enc := json.NewEncoder(p.w)
	enc.SetIndent("", indent)
	return enc.Encode(v)
}

func (p *statusPrinter) yaml(v any) error {
	out, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(p.w, "---\n%s", out); err != nil {
		return err
	}
	return nil
}

func (p *statusPrinter) table(rows []volumeStatus, header bool) error {
	wide := p.format == "wide"
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	if header {
		columns := "NAMESPACE\tCLAIM\tSTATUS\tPV\tNODE\tPATH\tCAPACITY\tUSED"
		if wide {
			columns += "\tPOOL\tBACKEND\tCLASS\tACCESS MODES\tRECLAIM\tAGE"
		}
		fmt.Fprintln(tw, columns)
	}
	for i := range rows {
		r := &rows[i]
		fields := []string{r.Namespace, r.Claim, r.Phase, r.PV, r.Node, r.Path, capacityColumn(r), usedColumn(r)}
		if wide {
			fields = append(fields, r.Pool, r.Backend, r.StorageClass, strings.Join(r.AccessModes, ","), r.ReclaimPolicy, p.age(r))
		}
		for j := range fields {
			if fields[j] == "" {
				fields[j] = "-"
			}
		}
		fmt.Fprintln(tw, strings.Join(fields, "\t"))
	}
	return tw.Flush()
}

// capacityColumn is the PV's capacity, or what the claim asks for before
// there is a PV.
func capacityColumn(r *volumeStatus) string {
	if r.PV == "" && r.Requested != "" {
		return r.Requested + " (requested)"
	}
	return r.Capacity
}

func usedColumn(r *volumeStatus) string {
	if r.UsedBytes == nil {
		return ""
	}
	return resource.NewQuantity(int64(*r.UsedBytes), resource.BinarySI).String()
}

func (p *statusPrinter) age(r *volumeStatus) string {
	if r.Created.IsZero() {
		return ""
	}
	return duration.HumanDuration(p.now.Sub(r.Created.Time))
}

// findingsTable lists, after a blank line, each volume an agent found
// wrong: a node's orphans with how long they have had no PV or claim, its
// PVs without volume and their claims, its volumes set aside. It prints
// nothing when every node asked is clean.
func (p *statusPrinter) findingsTable(nodes []nodeFindings) error {
	var lines []string
	for _, f := range nodes {
		for _, o := range f.Orphans {
			lines = append(lines, strings.Join([]string{f.Node, o.VolumeID, "orphan",
				"no PV or claim for " + duration.HumanDuration(p.now.Sub(o.Since.Time))}, "\t"))
		}
		for _, m := range f.Missing {
			claim := "no claim"
			if m.Claim != "" {
				claim = "claim " + m.ClaimNamespace + "/" + m.Claim
			}
			lines = append(lines, strings.Join([]string{f.Node, m.VolumeID, "missing", "PV " + m.PV + ", " + claim}, "\t"))
		}
		for _, u := range f.Unavailable {
			lines = append(lines, strings.Join([]string{f.Node, u.VolumeID, "unavailable", u.Reason}, "\t"))
		}
	}
	if len(lines) == 0 {
		return nil
	}
	fmt.Fprintln(p.w)
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tVOLUME\tPROBLEM\tDETAIL")
	for _, l := range lines {
		fmt.Fprintln(tw, l)
	}
	return tw.Flush()
}
