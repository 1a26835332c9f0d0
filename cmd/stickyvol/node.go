package main

import (
	"context"
	"errors"
	"fmt"
	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/provisioner"
)

// nodeOptions are the flags of `stickyvol node`.
type nodeOptions struct {
	nodeName            string
	kubeletRoot         string
	dataRoot            string
	pools               []string
	backend             string
	capacity            string
	maxVolumes          int64
	socketGroup         int
	kubeconfig          string
	qps                 float32
	burst               int
	threadiness         int
	operationTimeout    time.Duration
	metricsAddress      string
	profiling           bool
	registerWithKubelet bool
	reconcilePeriod     time.Duration
	deleteOrphansAfter  time.Duration
	publishCapacity     bool
	namespace           string
	capacityOwner       string
	expandVolumes       bool
	snapshots           bool
}

func newNodeCommand(env environment) *cobra.Command {
	o := &nodeOptions{}
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run the node agent: CSI driver, provisioner, kubelet registration, metrics",
		Long: "Runs everything stickyvol does on one node: the CSI driver on\n" +
			"<kubelet-root>/plugins/" + driver.Name + "/csi.sock, kubelet plugin registration, the\n" +
			"provisioner for claims scheduled to this node, the resizer of its volumes, this node's\n" +
			"CSIStorageCapacity objects, and /healthz, /readyz, /metrics and /volumes. Cluster duties\n" +
			"run in `stickyvol controller`. Outside a cluster (tests, simulated nodes) give --kubeconfig,\n" +
			"--node-name, --data-root, --kubelet-root and --register-with-kubelet=false.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return runNode(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.nodeName, "node-name", env.nodeName, "Kubernetes name of this node; defaults to $NODE_NAME.")
	f.StringVar(&o.kubeletRoot, "kubelet-root", "/var/lib/kubelet", "kubelet's root directory; the CSI socket and the registration socket go under it.")
	f.StringVar(&o.dataRoot, "data-root", "/var/lib/stickyvol", "Directory that holds the volumes (volumes/<id>/) and their records (meta/).")
	f.StringArrayVar(&o.pools, "pool", nil, "Another data root, as a pool that StorageClasses pick with the parameter pool: NAME=PATH, optionally followed by ,backend=B (default: --backend) and ,capacity=Q (default: the free space of PATH's file system at start). Repeatable; NAME is a DNS label other than default, which is --data-root's pool.")
	f.StringVar(&o.backend, "backend", driver.BackendAuto, "What new volumes are made of, in every pool without a backend of its own: btrfs (a subvolume with a qgroup limit: the size is enforced; needs the data root on btrfs), directory (a plain directory: the size is bookkeeping), or auto (btrfs where the data root is btrfs). Existing volumes keep theirs.")
	f.StringVar(&o.capacity, "capacity", "", "Bytes the volumes in --data-root (the default pool) may reserve, as a quantity (10Gi). Empty: the free space of the data root's file system at start, plus what existing volumes reserve.")
	f.Int64Var(&o.maxVolumes, "max-volumes", 0, "Most volumes kubelet may put on this node (reported to the scheduler via CSINode). 0: no limit.")
	f.IntVar(&o.socketGroup, "socket-group", -1, "Group ID that may use the CSI socket (mode 0660). -1: owner only (mode 0600).")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file. Empty: the in-cluster service account.")
	f.Float32Var(&o.qps, "kube-api-qps", 50, "Sustained requests per second to the API server. A claim costs about three writes (the PV, two events).")
	f.IntVar(&o.burst, "kube-api-burst", 100, "Requests allowed in a burst above --kube-api-qps.")
	f.IntVar(&o.threadiness, "threadiness", provisioner.DefaultThreadiness, "Claims provisioned (and volumes deleted) in parallel.")
	f.DurationVar(&o.operationTimeout, "operation-timeout", provisioner.DefaultTimeout, "Timeout of one CreateVolume, DeleteVolume or ControllerExpandVolume call to the driver.")
	f.StringVar(&o.metricsAddress, "metrics-address", ":9808", "host:port for /healthz, /readyz, /metrics and /volumes (this node's part of stickyvol status). Empty: no HTTP server.")
	f.BoolVar(&o.profiling, "profiling", false, profilingUsage)
	f.BoolVar(&o.registerWithKubelet, "register-with-kubelet", true, "Serve kubelet's plugin registration socket under <kubelet-root>/plugins_registry. Off for a node without kubelet.")
	f.DurationVar(&o.reconcilePeriod, "reconcile-period", provisioner.DefaultReconcilePeriod, "How often this node's volumes are compared with the PVs that name it (orphans, missing volumes).")
	f.DurationVar(&o.deleteOrphansAfter, "delete-orphans-after", 0, "Delete a volume that no PV names and no claim waits for once it has been so for this long (at least 10m). 0: never; orphans are only counted and logged.")
	f.BoolVar(&o.publishCapacity, "publish-capacity", true, "Publish this node's free capacity per StorageClass as CSIStorageCapacity objects, for the scheduler. Off: what this node published is deleted at start; off only together with storageCapacity: false in the CSIDriver, or no pod with a stickyvol claim is scheduled.")
	f.StringVar(&o.namespace, "namespace", env.namespaceOr("stickyvol"), "Namespace of the CSIStorageCapacity objects: the driver's, where the scheduler and the controller read them; defaults to $POD_NAMESPACE when set.")
	f.StringVar(&o.capacityOwner, "capacity-owner", env.podName, "The agent's own pod, in --namespace; its controller (the DaemonSet) owns the CSIStorageCapacity objects, so they go with the install. Defaults to $POD_NAME. Empty: no owner (an agent outside a pod); the objects stay until deleted by hand or with their Node.")
	f.BoolVar(&o.expandVolumes, "expand-volumes", true, "Grow this node's volumes when their claims ask for more (classes with allowVolumeExpansion), as external-resizer would.")
	f.BoolVar(&o.snapshots, "snapshots", true, "Make and delete this node's VolumeSnapshots, as csi-snapshotter would, and restore claims from them. Needs the VolumeSnapshot CRDs and the snapshot-controller with --enable-distributed-snapshotting; without the CRDs the agent waits for them.")
	return cmd
}

func (o *nodeOptions) validate() error {
	var errs []error
	if o.nodeName == "" {
		errs = append(errs, errors.New("--node-name is required (or set NODE_NAME)"))
	}
	if !filepath.IsAbs(o.kubeletRoot) {
		errs = append(errs, fmt.Errorf("--kubelet-root %q must be an absolute path", o.kubeletRoot))
	}
	if o.capacity != "" {
		if q, err := resource.ParseQuantity(o.capacity); err != nil || q.Sign() <= 0 {
			errs = append(errs, fmt.Errorf("--capacity %q must be a positive quantity such as 10Gi", o.capacity))
		}
	}
	if pools, err := o.parsePools(); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, checkPoolRoots(filepath.Clean(o.dataRoot), pools, filepath.Clean(o.kubeletRoot)))
	}
	switch o.backend {
	case "", driver.BackendAuto, driver.BackendDirectory, driver.BackendBtrfs:
	default:
		errs = append(errs, fmt.Errorf("--backend %q must be auto, directory or btrfs", o.backend))
	}
	if o.qps <= 0 || o.burst <= 0 || o.threadiness <= 0 || o.operationTimeout <= 0 {
		errs = append(errs, errors.New("--kube-api-qps, --kube-api-burst, --threadiness and --operation-timeout must be positive"))
	}
	if o.profiling && o.metricsAddress == "" {
		errs = append(errs, errProfilingWithoutServer)
	}
	if o.reconcilePeriod <= 0 {
		errs = append(errs, errors.New("--reconcile-period must be positive"))
	}
	if o.publishCapacity && o.namespace == "" {
		errs = append(errs, errors.New("--namespace is required to publish capacity (or set POD_NAMESPACE, or --publish-capacity=false)"))
	}
	if o.deleteOrphansAfter != 0 && o.deleteOrphansAfter < provisioner.DefaultOrphanGrace {
		errs = append(errs, fmt.Errorf("--delete-orphans-after must be 0 or at least %s: a volume is an orphan only after that", provisioner.DefaultOrphanGrace))
	}
	return errors.Join(errs...)
}

// parsePools parses the --pool flags: NAME=PATH[,backend=B][,capacity=Q].
func (o *nodeOptions) parsePools() ([]driver.Pool, error) {
	var pools []driver.Pool
	var errs []error
	for _, flag := range o.pools {
		name, rest, ok := strings.Cut(flag, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("--pool %q must be NAME=PATH, optionally followed by ,backend=B and ,capacity=Q", flag))
			continue
		}
		fields := strings.Split(rest, ",")
		p := driver.Pool{Name: name, DataRoot: filepath.Clean(fields[0])}
		if fields[0] == "" {
			p.DataRoot = ""
		}
		for _, field := range fields[1:] {
			key, value, _ := strings.Cut(field, "=")
			switch key {
			case "backend":
				p.Backend = value
			case "capacity":
				q, err := resource.ParseQuantity(value)
				if err != nil || q.Sign() <= 0 {
					errs = append(errs, fmt.Errorf("--pool %s: capacity %q must be a positive quantity such as 10Gi", name, value))
				}
				p.Capacity = q.Value()
			default:
				errs = append(errs, fmt.Errorf("--pool %s: unknown option %q; the options are backend= and capacity=", name, field))
			}
		}
		pools = append(pools, p)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return pools, nil
}

// checkPoolRoots checks the pools (driver.ValidatePools) and that no data
// root is, holds or is inside the kubelet root, where kubelet's pod
// directories and the driver's socket are.
func checkPoolRoots(dataRoot string, pools []driver.Pool, kubeletRoot string) error {
	errs := []error{driver.ValidatePools(dataRoot, pools)}
	all := append([]driver.Pool{{Name: driver.DefaultPool, DataRoot: dataRoot}}, pools...)
	for _, p := range all {
		if driver.PathsOverlap(p.DataRoot, kubeletRoot) {
			errs = append(errs, fmt.Errorf("pool %s: data root %s is, holds or is inside --kubelet-root %s", p.Name, p.DataRoot, kubeletRoot))
		}
	}
	return errors.Join(errs...)
}

// csiSocket is where the driver listens and where kubelet finds it.
func (o *nodeOptions) csiSocket() string {
	return filepath.Join(o.kubeletRoot, "plugins", driver.Name, "csi.sock")
}

func (o *nodeOptions) driverConfig() driver.Config {
	var capacity int64
	if o.capacity != "" {
		q := resource.MustParse(o.capacity)
		capacity = q.Value() // checked by validate
	}
	pools, _ := o.parsePools() // checked by validate
	return driver.Config{
		Name:              driver.Name,
		Version:           version,
		NodeID:            o.nodeName,
		DataRoot:          filepath.Clean(o.dataRoot),
		Backend:           o.backend,
		Capacity:          capacity,
		Pools:             pools,
		MaxVolumesPerNode: o.maxVolumes,
		Endpoint:          o.csiSocket(),
		SocketGroup:       o.socketGroup,
	}
}

// restConfig is the in-cluster configuration, or kubeconfig's.
func restConfig(kubeconfig string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("API client configuration: %w", err)
	}
	return cfg, nil
}

// kubeClient builds the API client. client-go's default of 5 QPS would let
// a 500-claim StatefulSet take minutes; see --kube-api-qps.
func kubeClient(cfg *rest.Config, qps float32, burst int) (kubernetes.Interface, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = qps, burst
	cfg.UserAgent = "stickyvol/" + version
	// Protobuf for built-in types: less CPU and bandwidth than JSON for
	// the cluster-wide claim and PV watches every node keeps.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	return kubernetes.NewForConfig(cfg)
}

// runNode runs the agent until ctx is done or a part fails.
func runNode(ctx context.Context, o *nodeOptions) error {
	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	kube, err := kubeClient(cfg, o.qps, o.burst)
	if err != nil {
		return err
	}
	var snaps snapclientset.Interface
	if o.snapshots {
		if snaps, err = snapclientset.NewForConfig(cfg); err != nil {
			return err
		}
	}
	a, err := newAgent(ctx, o, kube, snaps)
	if err != nil {
		return err
	}
	return a.run(ctx)
}
