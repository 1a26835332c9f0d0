package framework

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// AuditReport is what Audit found. Every list names what is wrong; a clean
// cluster has them all empty.
type AuditReport struct {
	Claims, PVs, Volumes int
	// Unbound: claims not Bound, or bound to a PV that is not theirs.
	Unbound []string
	// Duplicates: claims that more than one PV names.
	Duplicates []string
	// Missing: PVs whose volume (directory and record) is not on their node.
	Missing []string
	// Orphans: volume directories or records that no PV names.
	Orphans []string
}

// Problems lists every finding, one line each.
func (r AuditReport) Problems() []string {
	var out []string
	for _, l := range []struct {
		what  string
		items []string
	}{{"not bound", r.Unbound}, {"duplicate PV", r.Duplicates}, {"volume missing", r.Missing}, {"orphan", r.Orphans}} {
		for _, item := range l.items {
			out = append(out, l.what+": "+item)
		}
	}
	return out
}

func (r AuditReport) String() string {
	return fmt.Sprintf("%d claims, %d PVs, %d volumes on disk: %d not bound, %d duplicates, %d missing, %d orphans",
		r.Claims, r.PVs, r.Volumes, len(r.Unbound), len(r.Duplicates), len(r.Missing), len(r.Orphans))
}

// Audit holds the claims of namespaces and every stickyvol PV against the
// volumes on the nodes' disks: every claim Bound to exactly one PV that names
// it, every PV's volume present on its node, no volume or record without a
// PV. roots maps a node to its data root as the host sees it (a real node's
// DataDir, a host agent's root); PVs of other nodes and of other namespaces'
// claims are not looked for on disk. Call it when nothing is in flight.
func (f *Framework) Audit(ctx context.Context, namespaces []string, roots map[string]string) (AuditReport, error) {
	var r AuditReport
	pvList, err := f.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return r, err
	}
	byClaim := map[types.UID][]string{}
	handles := map[string]bool{}
	pvs := map[string]*v1.PersistentVolume{}
	for i := range pvList.Items {
		pv := &pvList.Items[i]
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != DriverName {
			continue
		}
		r.PVs++
		pvs[pv.Name] = pv
		handles[pv.Spec.CSI.VolumeHandle] = true
		if ref := pv.Spec.ClaimRef; ref != nil && ref.UID != "" {
			byClaim[ref.UID] = append(byClaim[ref.UID], pv.Name)
		}
		// Another namespace's PV may be on its way out, its volume gone
		// first: only the audited claims' volumes are looked for.
		root, ok := roots[PVNode(pv)]
		if !ok || pv.Spec.ClaimRef == nil || !slices.Contains(namespaces, pv.Spec.ClaimRef.Namespace) {
			continue
		}
		for _, p := range []string{filepath.Join("volumes", pv.Spec.CSI.VolumeHandle), filepath.Join("meta", pv.Spec.CSI.VolumeHandle+".json")} {
			if _, err := os.Stat(filepath.Join(root, p)); err != nil {
				r.Missing = append(r.Missing, fmt.Sprintf("PV %s on %s: %v", pv.Name, PVNode(pv), err))
			}
		}
	}
	for _, ns := range namespaces {
		claims, err := f.Client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return r, err
		}
		for _, c := range claims.Items {
			r.Claims++
			name := ns + "/" + c.Name
			if names := byClaim[c.UID]; len(names) > 1 {
				slices.Sort(names)
				r.Duplicates = append(r.Duplicates, fmt.Sprintf("claim %s: PVs %s", name, strings.Join(names, ", ")))
			}
			pv := pvs[c.Spec.VolumeName]
			if c.Status.Phase != v1.ClaimBound || pv == nil || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != c.UID {
				r.Unbound = append(r.Unbound, fmt.Sprintf("claim %s: phase %s, volume %q", name, c.Status.Phase, c.Spec.VolumeName))
			}
		}
	}
	for node, root := range roots {
		for _, sub := range []string{"volumes", "meta"} {
			entries, err := os.ReadDir(filepath.Join(root, sub))
			if err != nil && !os.IsNotExist(err) {
				return r, err
			}
			for _, e := range entries {
				id, isRecord := strings.CutSuffix(e.Name(), ".json")
				if sub == "meta" && !isRecord {
					continue // set-aside records and temporary files are the driver's own business
				}
				if sub == "volumes" {
					r.Volumes++
				}
				if !handles[id] {
					r.Orphans = append(r.Orphans, fmt.Sprintf("%s on %s", filepath.Join(sub, e.Name()), node))
				}
			}
		}
	}
	return r, nil
}

// PVNode is the node a stickyvol PV's node affinity names, or "".
func PVNode(pv *v1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == TopologyKey && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	return ""
}
