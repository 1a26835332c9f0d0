// Package agentapi is what a node agent (`stickyvol node`) serves about its
// volumes over HTTP, and how a client finds it: the JSON document of GET
// /volumes, the label of the agents' pods and the name of the port.
//
// The document is versioned: a field is only added within a version, and a
// reader that gets another APIVersion says so instead of guessing.
package agentapi

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

const (
	// Path is where the agent serves its NodeVolumes document.
	Path = "/volumes"
	// PortName is the name of the agent's HTTP port (/healthz, /metrics,
	// /volumes) in its pod (deploy/base/daemonset.yaml).
	PortName = "http-metrics"
	// PodSelector selects the agents' pods in the driver's namespace.
	PodSelector = "app.kubernetes.io/name=stickyvol-node"

	// APIVersion and Kind name the NodeVolumes document.
	APIVersion = "stickyvol.dev/v1"
	Kind       = "NodeVolumes"
)

// NodeVolumes is the agent's account of the volumes of its node that need a
// person: those that exist only on the node's disk and so cannot be seen
// from the API server.
type NodeVolumes struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Node       string `json:"node"`
	// Checked is when the agent last compared its volumes with the PVs;
	// absent before its first comparison, when Orphans and Missing are not
	// known yet.
	Checked metav1.Time `json:"checked,omitzero"`
	// Orphans are volumes no PV names and no claim waits for, past the
	// grace period.
	Orphans []Orphan `json:"orphans"`
	// Missing are PVs of the node whose volume the driver does not have.
	Missing []Missing `json:"missing"`
	// Unavailable are volumes the driver does not serve because their
	// record was corrupt and is set aside.
	Unavailable []Unavailable `json:"unavailable"`
}

// Orphan is a volume that no PV names and no claim waits for.
type Orphan struct {
	VolumeID string `json:"volumeID"`
	// Since is when the agent first saw the volume without PV or claim.
	Since metav1.Time `json:"since"`
}

// Missing is a PV whose volume the node's driver does not have.
type Missing struct {
	PV       string `json:"pv"`
	VolumeID string `json:"volumeID"`
	// ClaimNamespace and Claim name the PV's claim, when it has one.
	ClaimNamespace string `json:"claimNamespace,omitempty"`
	Claim          string `json:"claim,omitempty"`
}

// Unavailable is a volume the driver does not serve, and why.
type Unavailable struct {
	VolumeID string `json:"volumeID"`
	Reason   string `json:"reason"`
}
