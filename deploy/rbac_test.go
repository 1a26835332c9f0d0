package deploy_test

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// grant is one verb on one resource.
type grant struct{ group, resource, verb string }

func grants(group, resource string, verbs ...string) []grant {
	var g []grant
	for _, v := range verbs {
		g = append(g, grant{group, resource, v})
	}
	return g
}

// What each identity does with the API (see deploy/base/rbac.yaml).
var (
	// `stickyvol node`: its own node's claims and PVs (node-policy.yaml
	// holds it to them).
	agentNeeds = slices.Concat(
		grants("", "persistentvolumeclaims", "get", "list", "watch", "update"),
		grants("", "persistentvolumeclaims/status", "update"),
		grants("", "persistentvolumes", "get", "list", "watch", "create", "delete", "patch"),
		grants("storage.k8s.io", "storageclasses", "get", "list", "watch"),
		grants("", "nodes", "get", "list", "watch"),
		grants("", "events", "create", "patch"),
		// The snapshotter: its own node's VolumeSnapshotContents
		// (node-policy.yaml holds it to them) and their classes. The
		// provisioner: the VolumeSnapshot a claim is restored from.
		grants("snapshot.storage.k8s.io", "volumesnapshotcontents", "get", "list", "watch", "update", "patch"),
		grants("snapshot.storage.k8s.io", "volumesnapshotcontents/status", "update", "patch"),
		grants("snapshot.storage.k8s.io", "volumesnapshotclasses", "get", "list", "watch"),
		grants("snapshot.storage.k8s.io", "volumesnapshots", "get", "list", "watch"),
	)
	// `stickyvol node` in its own namespace: its node's CSIStorageCapacity
	// objects (node-policy.yaml holds it to them) and its own pod, whose
	// owner owns them.
	agentNamespaceNeeds = slices.Concat(
		grants("storage.k8s.io", "csistoragecapacities", "list", "watch", "create", "update", "delete"),
		grants("", "pods", "get"),
	)
	// `stickyvol controller`: the cluster duties.
	controllerNeeds = slices.Concat(
		grants("", "persistentvolumeclaims", "list", "watch", "patch", "delete"),
		grants("", "pods", "list", "delete"),
		grants("", "persistentvolumes", "list", "watch", "patch", "delete"),
		grants("storage.k8s.io", "storageclasses", "list", "watch"),
		grants("", "nodes", "get", "list", "watch"),
		grants("storage.k8s.io", "csinodes", "list", "watch"),
		grants("", "events", "create", "patch"),
		// Copies: a restore's snapshot and the node of its content. Lost
		// snapshots: the deleted contents of gone nodes lose a finalizer.
		grants("snapshot.storage.k8s.io", "volumesnapshots", "get"),
		grants("snapshot.storage.k8s.io", "volumesnapshotcontents", "get", "list", "watch", "patch"),
	)
	controllerNamespaceNeeds = slices.Concat(
		grants("coordination.k8s.io", "leases", "get", "create", "update"),
		grants("storage.k8s.io", "csistoragecapacities", "list", "watch", "delete"),
	)
)

func allows(rules []rbacv1.PolicyRule, g grant) bool {
	return slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool {
		return slices.Contains(r.APIGroups, g.group) && slices.Contains(r.Resources, g.resource) &&
			slices.Contains(r.Verbs, g.verb) && len(r.ResourceNames) == 0
	})
}

// granted lists every grant the rules make, failing on wildcards.
func granted(t *testing.T, rules []rbacv1.PolicyRule) []grant {
	t.Helper()
	var all []grant
	for _, r := range rules {
		for _, field := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames, r.NonResourceURLs} {
			if slices.Contains(field, "*") {
				t.Errorf("rule %v grants a wildcard", r)
			}
		}
		for _, group := range r.APIGroups {
			for _, res := range r.Resources {
				all = append(all, grants(group, res, r.Verbs...)...)
			}
		}
	}
	return all
}

func TestRBACIsExactlyWhatEachNeeds(t *testing.T) {
	objs := render(t, "base")
	for _, tc := range []struct {
		name  string
		rules []rbacv1.PolicyRule
		needs []grant
	}{
		{"ClusterRole " + agentName, clusterRole(t, objs, agentName).Rules, agentNeeds},
		{"Role " + agentName, get[*rbacv1.Role](t, objs, agentName).Rules, agentNamespaceNeeds},
		{"ClusterRole " + ctrlName, clusterRole(t, objs, ctrlName).Rules, controllerNeeds},
		{"Role " + ctrlName, get[*rbacv1.Role](t, objs, ctrlName).Rules, controllerNamespaceNeeds},
	} {
		for _, need := range tc.needs {
			if !allows(tc.rules, need) {
				t.Errorf("%s does not allow %s on %q in group %q", tc.name, need.verb, need.resource, need.group)
			}
		}
		for _, g := range granted(t, tc.rules) {
			if !slices.Contains(tc.needs, g) {
				t.Errorf("%s allows %s on %q in group %q, which it does not need", tc.name, g.verb, g.resource, g.group)
			}
		}
	}
	// The agents hold no rights in a namespace but their own, and there
	// only their Role's: no Lease, nothing to campaign with.
	for _, rb := range all[*rbacv1.RoleBinding](objs) {
		for _, s := range rb.Subjects {
			if s.Name == agentName && rb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: agentName}) {
				t.Errorf("RoleBinding %s/%s grants the agents %v", rb.Namespace, rb.Name, rb.RoleRef)
			}
		}
	}
}

func clusterRole(t *testing.T, objs []object, name string) *rbacv1.ClusterRole {
	t.Helper()
	cr := get[*rbacv1.ClusterRole](t, objs, name)
	if cr.AggregationRule != nil {
		t.Errorf("ClusterRole %s must not aggregate other roles", name)
	}
	return cr
}

func TestRBACBindsEachServiceAccount(t *testing.T) {
	objs := render(t, "base")
	ds := get[*appsv1.DaemonSet](t, objs, agentName)
	d := get[*appsv1.Deployment](t, objs, ctrlName)
	for _, tc := range []struct {
		name string
		sa   rbacv1.Subject
	}{
		{agentName, rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: ds.Spec.Template.Spec.ServiceAccountName, Namespace: ds.Namespace}},
		{ctrlName, rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: d.Spec.Template.Spec.ServiceAccountName, Namespace: d.Namespace}},
	} {
		crb := get[*rbacv1.ClusterRoleBinding](t, objs, tc.name)
		if crb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: tc.name}) {
			t.Errorf("ClusterRoleBinding %s refers to %v", tc.name, crb.RoleRef)
		}
		if !slices.Equal(crb.Subjects, []rbacv1.Subject{tc.sa}) {
			t.Errorf("ClusterRoleBinding %s subjects %v, want only %v", tc.name, crb.Subjects, tc.sa)
		}
		rb := get[*rbacv1.RoleBinding](t, objs, tc.name)
		if rb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: tc.name}) {
			t.Errorf("RoleBinding %s refers to %v", tc.name, rb.RoleRef)
		}
		if !slices.Equal(rb.Subjects, []rbacv1.Subject{tc.sa}) {
			t.Errorf("RoleBinding %s subjects %v, want only %v", tc.name, rb.Subjects, tc.sa)
		}
		// The controller elects its leader, and the agents publish their
		// capacity, in their own namespace (--namespace=$(POD_NAMESPACE)).
		if rb.Namespace != tc.sa.Namespace {
			t.Errorf("RoleBinding %s is in %s, not in its pods' namespace %s", tc.name, rb.Namespace, tc.sa.Namespace)
		}
	}
}
