package main

import (
	"context"
	"fmt"
	"io"
	"reflect"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// phaseDeleted is the STATUS --watch prints for a claim that is gone.
const phaseDeleted = "Deleted"

// settle is how long --watch lets a burst of events (a StatefulSet's
// claims, a PV and its bind) gather before it prints.
const settle = 100 * time.Millisecond

// watchStatus prints the whole list, then each claim again when it, its PV
// or its use changes, until ctx ends. Claims, PVs and classes come from
// informers, so a change costs no API call; used bytes are asked of the
// kubelets every o.usageInterval.
func watchStatus(ctx context.Context, kube kubernetes.Interface, o *statusOptions, out, errOut io.Writer) error {
	factory := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(o.namespace))
	classes := factory.Storage().V1().StorageClasses()
	pvs := factory.Core().V1().PersistentVolumes()
	claims := factory.Core().V1().PersistentVolumeClaims()
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	for _, informer := range []cache.SharedIndexInformer{classes.Informer(), pvs.Informer(), claims.Informer()} {
		if _, err := informer.AddEventHandler(handler); err != nil {
			return err
		}
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("listing %v did not finish", typ)
		}
	}

	list := func() (statusObjects, error) {
		var objs statusObjects
		var err error
		if objs.classes, err = classes.Lister().List(labels.Everything()); err != nil {
			return objs, err
		}
		if objs.pvs, err = pvs.Lister().List(labels.Everything()); err != nil {
			return objs, err
		}
		objs.claims, err = claims.Lister().List(labels.Everything())
		return objs, err
	}
	w := &statusWatcher{
		printer: newStatusPrinter(out, o.output, time.Now()),
		errOut:  errOut,
		shown:   map[claimKey]volumeStatus{},
		warned:  map[string]bool{},
	}
	var usage usageFunc
	var tick <-chan time.Time
	if !o.noUsage {
		usage = kubeletUsage(kube)
		ticker := time.NewTicker(o.usageInterval)
		defer ticker.Stop()
		tick = ticker.C
	}
	refresh := usage != nil
	for first := true; ; first = false {
		objs, err := list()
		if err != nil {
			return err
		}
		rows := statusRows(objs, o.dataRoot)
		// The agents' findings come with the first list only (see --agents).
		var nodes []nodeFindings
		if first {
			var warnings []string
			nodes, warnings = askAgents(ctx, kube, o, rows)
			w.warn(warnings)
		}
		if err := w.show(ctx, rows, nodes, usage, refresh, first); err != nil {
			return err
		}
		refresh = false
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
			refresh = true
		case <-changed:
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(settle):
			}
		}
	}
}

// statusWatcher remembers what --watch has printed.
type statusWatcher struct {
	printer *statusPrinter
	errOut  io.Writer
	// shown is each claim as last printed.
	shown map[claimKey]volumeStatus
	// used is the last use the kubelets reported.
	used map[claimKey]uint64
	// warned holds the warnings printed, each printed once.
	warned map[string]bool
}

// warn prints each warning it has not printed before.
func (w *statusWatcher) warn(warnings []string) {
	for _, warning := range warnings {
		if !w.warned[warning] {
			w.warned[warning] = true
			fmt.Fprintln(w.errOut, "warning:", warning)
		}
	}
}

// show prints the rows that differ from what was shown (all of them the
// first time, with nodes after them), and claims that are gone as Deleted.
// With refresh it first asks the kubelets for the use of every volume.
func (w *statusWatcher) show(ctx context.Context, rows []volumeStatus, nodes []nodeFindings, usage usageFunc, refresh, first bool) error {
	if refresh {
		w.warn(fillUsage(ctx, rows, usage))
		w.used = map[claimKey]uint64{}
		for i := range rows {
			if rows[i].UsedBytes != nil {
				w.used[rows[i].key()] = *rows[i].UsedBytes
			}
		}
	}
	var changed []volumeStatus
	seen := map[claimKey]bool{}
	for i := range rows {
		r := rows[i]
		if v, ok := w.used[r.key()]; ok && r.PV != "" {
			r.UsedBytes = &v
		}
		seen[r.key()] = true
		if old, ok := w.shown[r.key()]; first || !ok || !reflect.DeepEqual(old, r) {
			changed = append(changed, r)
			w.shown[r.key()] = r
		}
	}
	for key, old := range w.shown {
		if !seen[key] {
			old.Phase, old.UsedBytes = phaseDeleted, nil
			changed = append(changed, old)
			delete(w.shown, key)
		}
	}
	if len(changed) == 0 && !first {
		return nil
	}
	w.printer.now = time.Now()
	return w.printer.print(changed, nodes, first)
}
