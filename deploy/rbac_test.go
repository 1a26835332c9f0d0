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

// What `stickyvol node` does with the API (see deploy/base/rbac.yaml).
var (
	clusterNeeds = slices.Concat(
		grants("", "persistentvolumeclaims", "get", "list", "watch", "update", "patch", "delete"),
		grants("", "pods", "list", "delete"),
		grants("", "persistentvolumes", "get", "list", "watch", "create", "delete", "update", "patch"),
		grants("storage.k8s.io", "storageclasses", "get", "list", "watch"),
		grants("", "nodes", "get", "list", "watch"),
		grants("storage.k8s.io", "csinodes", "get", "list", "watch"),
		grants("", "events", "create", "patch"),
	)
	namespaceNeeds = slices.Concat(
		grants("coordination.k8s.io", "leases", "get", "create", "update"),
		grants("storage.k8s.io", "csistoragecapacities", "get", "list", "watch", "create", "update", "delete"),
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

func TestRBACIsExactlyWhatTheAgentNeeds(t *testing.T) {
	objs := render(t, "base")
	cr := get[*rbacv1.ClusterRole](t, objs, agentName)
	role := get[*rbacv1.Role](t, objs, agentName)
	if cr.AggregationRule != nil {
		t.Error("the ClusterRole must not aggregate other roles")
	}
	for _, tc := range []struct {
		name  string
		rules []rbacv1.PolicyRule
		needs []grant
	}{
		{"ClusterRole", cr.Rules, clusterNeeds},
		{"Role in " + role.Namespace, role.Rules, namespaceNeeds},
	} {
		for _, need := range tc.needs {
			if !allows(tc.rules, need) {
				t.Errorf("%s does not allow %s on %q in group %q", tc.name, need.verb, need.resource, need.group)
			}
		}
		for _, g := range granted(t, tc.rules) {
			if !slices.Contains(tc.needs, g) {
				t.Errorf("%s allows %s on %q in group %q, which the agent does not need", tc.name, g.verb, g.resource, g.group)
			}
		}
	}
}

func TestRBACBindsTheAgentsServiceAccount(t *testing.T) {
	objs := render(t, "base")
	ds := get[*appsv1.DaemonSet](t, objs, agentName)
	want := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: ds.Spec.Template.Spec.ServiceAccountName, Namespace: ds.Namespace}

	crb := get[*rbacv1.ClusterRoleBinding](t, objs, agentName)
	if crb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: agentName}) {
		t.Errorf("ClusterRoleBinding refers to %v", crb.RoleRef)
	}
	if !slices.Equal(crb.Subjects, []rbacv1.Subject{want}) {
		t.Errorf("ClusterRoleBinding subjects %v, want only %v", crb.Subjects, want)
	}
	rb := get[*rbacv1.RoleBinding](t, objs, agentName)
	if rb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: agentName}) {
		t.Errorf("RoleBinding refers to %v", rb.RoleRef)
	}
	if !slices.Equal(rb.Subjects, []rbacv1.Subject{want}) {
		t.Errorf("RoleBinding subjects %v, want only %v", rb.Subjects, want)
	}
	// The agent elects its leader in its own namespace (--leader-election-namespace).
	role := get[*rbacv1.Role](t, objs, agentName)
	if rb.Namespace != ds.Namespace || role.Namespace != ds.Namespace {
		t.Errorf("Role %s and RoleBinding %s are not in the agent's namespace %s", role.Namespace, rb.Namespace, ds.Namespace)
	}
}
