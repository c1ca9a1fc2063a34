/* machina's Cockpit page: lists the virtual machines, starts and stops them,
 * and edits their machine files (the lists of volumes, connections and
 * devices with forms built from `machina schema machine`). Every read and change runs the `machina`
 * binary (or reads the machine file) through the Cockpit bridge; changes ask
 * for Cockpit's superuser channel. No inline script and no eval (Cockpit's
 * CSP forbids both). */
"use strict";

(function () {
    const $ = (sel) => document.querySelector(sel);
    const el = (tag, attrs, ...children) => {
        const e = document.createElement(tag);
        for (const [k, v] of Object.entries(attrs || {})) {
            if (k === "class") e.className = v;
            else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
            else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
        }
        for (const c of children) {
            if (c === null || c === undefined) continue;
            e.append(c instanceof Node ? c : String(c));
        }
        return e;
    };

    /* Settings: the manifest's "config", which an administrator (or the
     * browser test) overrides with /etc/cockpit/machina.override.json. */
    const settings = {
        machina: "machina",
        "config-dir": "",
        "plan-dir": "",
        "unit-dir": "",
        "gen-root": "",
        "poll-seconds": 5,
    };
    let admin = false;
    let hostTags = [];
    let machines = [];
    let pollTimer = null;

    function globalArgs() {
        const a = [];
        for (const k of ["config-dir", "plan-dir", "unit-dir"])
            if (settings[k]) a.push("--" + k, settings[k]);
        return a;
    }
    function configDir() {
        return settings["config-dir"] || "/etc/machina";
    }
    function machineFile(name) {
        return configDir() + "/machine.conf.d/" + name + ".conf.json";
    }

    /* Runs a process; resolves to {ok, out, err, status} and never rejects,
     * because machina reports problems on stdout (--json) with exit 1. */
    function run(argv, opts) {
        opts = opts || {};
        return new Promise((resolve) => {
            const proc = cockpit.spawn(argv, { superuser: "try", err: "message", ...opts.spawn });
            proc.then(
                (out, err) => resolve({ ok: true, out: out || "", err: err || "", status: 0 }),
                (ex, out) => resolve({
                    ok: false,
                    out: out || "",
                    err: ex.message || ex.problem || String(ex),
                    status: ex.exit_status === undefined ? null : ex.exit_status,
                    problem: ex.problem || null,
                }));
            if (opts.input !== undefined) proc.input(opts.input);
        });
    }
    function machina(args, opts) {
        return run([settings.machina, ...globalArgs(), ...args], opts);
    }
    function parseJson(text) {
        try {
            return JSON.parse(text);
        } catch (e) {
            return null;
        }
    }

    /* Fills a PatternFly inline alert: VARIANT (success, danger, info), a
     * title line and an optional description (pre-wrapped). */
    function setAlert(box, variant, title, description) {
        box.className = "pf-c-alert pf-m-inline" + (variant ? " pf-m-" + variant : "");
        box.replaceChildren(el("p", { class: "pf-c-alert__title" }, title));
        if (description) box.append(el("div", { class: "pf-c-alert__description" }, description));
        box.hidden = false;
    }
    function hideAlert(box) {
        box.replaceChildren();
        box.hidden = true;
    }

    function showError(text) {
        const box = $("#global-error");
        if (text) setAlert(box, "danger", text);
        else hideAlert(box);
    }

    /* ---- Overview ---- */

    /* The simple state of a `list --json` row. */
    function simpleState(m) {
        if (m.error) return "broken";
        const u = m.unit;
        if (!u) return "unknown";
        if (u["load-state"] === "not-found") return "not generated";
        switch (u["active-state"]) {
        case "active": return "running";
        case "activating": return "starting";
        case "deactivating": return "stopping";
        case "failed": return "failed";
        case "inactive": return "stopped";
        default: return u["active-state"] || "unknown";
        }
    }
    function since(m) {
        const s = m.unit && m.unit.since;
        return s ? new Date(s * 1000).toLocaleString() : "";
    }

    let tagsByMachine = {};

    async function refreshList() {
        const r = await machina(["list", "--json"]);
        const data = parseJson(r.out);
        if (!data) {
            showError("machina list --json failed: " + r.err);
            return;
        }
        machines = data.machines || [];
        $("#systemd-note").textContent = data.note || "";
        const cat = await machina(["cat", "--json", ...machines.filter(m => !m.error).map(m => m.name)]);
        const cats = parseJson(cat.out) || [];
        tagsByMachine = {};
        for (const c of cats) tagsByMachine[c.name] = c;
        renderList();
        if (currentVm()) renderVmState();
    }

    function renderList() {
        const body = $("#vms tbody");
        body.replaceChildren();
        for (const m of machines) {
            const state = simpleState(m);
            const c = tagsByMachine[m.name] || {};
            const changed = m["config-changed-since-gen"];
            const running = state === "running" || state === "starting";
            body.append(el("tr", { "data-name": m.name, role: "row" },
                el("td", { role: "cell", "data-label": "name" }, el("a", { href: "#/vm/" + encodeURIComponent(m.name) }, m.name)),
                el("td", { role: "cell", "data-label": "state" }, stateLabel(state)),
                el("td", { role: "cell", "data-label": "description" }, m.error ? m.error : m.description),
                el("td", { role: "cell", "data-label": "tags" }, ...(c.tags || []).map(t => label(t, "", true))),
                el("td", { role: "cell", "data-label": "uid" }, m.unit && m.unit["main-uid"] != null ? m.unit["main-uid"] : ""),
                el("td", { role: "cell", "data-label": "since" }, since(m)),
                el("td", { role: "cell", "data-label": "changed" }, changed === true ? "changed since gen" : changed === false ? "generated" : "not generated"),
                el("td", { role: "cell", class: "admin pf-c-table__action" },
                    el("button", {
                        type: "button", class: "pf-c-button pf-m-secondary pf-m-small",
                        disabled: !admin || m.error, onclick: () => lifecycle(running ? "stop" : "start", m.name)
                    }, running ? "Stop" : "Start"))));
        }
    }

    /* A PatternFly label; COLOR one of its colour modifiers. */
    function label(text, color, compact) {
        return el("span", { class: "pf-c-label" + (color ? " pf-m-" + color : "") + (compact ? " pf-m-compact" : "") },
            el("span", { class: "pf-c-label__content" }, text));
    }
    const STATE_COLOR = { running: "green", starting: "blue", stopping: "blue", failed: "red", broken: "red" };
    function stateLabel(state) {
        const l = label(state, STATE_COLOR[state] || "");
        l.dataset.state = state;
        return l;
    }

    function schedulePoll() {
        clearTimeout(pollTimer);
        // A timer after each completed refresh: never overlapping, no busy loop,
        // paused while the page is hidden.
        pollTimer = setTimeout(async () => {
            if (!cockpit.hidden) await refreshList();
            schedulePoll();
        }, Math.max(1, Number(settings["poll-seconds"]) || 5) * 1000);
    }

    async function lifecycle(action, name) {
        const args = [action];
        if (action === "shutdown") {
            const t = $("#shutdown-timeout").value.trim();
            if (t) args.push("--timeout", t);
        }
        args.push(name);
        const box = $("#action-result");
        const r = await machina(args);
        const title = "machina " + args.join(" ") + ": " + (r.ok ? "done" : "failed");
        setAlert(box, r.ok ? "success" : "danger", title, (r.out + r.err).trim());
        box.hidden = !currentVm();
        if (!r.ok && !currentVm()) showError(title + "\n" + (r.out + r.err).trim());
        await refreshList();
    }

    /* ---- A VM's page ---- */

    let vm = null; // {name, path, text, tag, obj, indent, newline}
    /* "form" or "json" (the raw text: every key, the escape hatch), and the
     * object the form's fields go over (the file's, or the JSON view's). */
    let mode = "form";
    let base = {};

    /* A machine name as machina accepts it: it becomes part of file paths
     * written as root, so nothing else (no "/", no "..") gets through. */
    const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

    function currentVm() {
        const p = cockpit.location.path;
        if (p.length !== 2 || p[0] !== "vm") return null;
        if (!NAME.test(p[1]) || p[1].includes("..")) {
            showError("Not a machine name: " + p[1]);
            return null;
        }
        return p[1];
    }

    function renderVmState() {
        const m = machines.find(x => x.name === vm?.name);
        if (!m) return;
        $("#vm-state").replaceWith(Object.assign(stateLabel(simpleState(m)), { id: "vm-state" }));
    }

    async function showVm(name) {
        $("#overview").hidden = true;
        $("#vm").hidden = false;
        $("#vm-title").textContent = name;
        $("#vm-crumb").textContent = name;
        $("#action-result").hidden = true;
        $("#review-panel").hidden = true;
        $("#apply-result").hidden = true;
        clearErrors($("#editor"));
        vm = { name, path: machineFile(name) };
        $("#file-path").textContent = vm.path;
        renderVmState();
        await Promise.all([loadFile(), loadInspect(name), loadArgs(name), loadLogs(name)]);
    }

    function loadFile() {
        return new Promise((resolve) => {
            cockpit.file(vm.path, { superuser: "try" }).read().then((text, tag) => {
                if (text === null) {
                    showError("No machine file " + vm.path);
                    return resolve();
                }
                setFile(text, tag);
                resolve();
            }, (ex) => {
                showError("Cannot read " + vm.path + ": " + cockpit.message(ex));
                resolve();
            });
        });
    }

    function setFile(text, tag) {
        vm.text = text;
        vm.tag = tag;
        vm.obj = parseJson(text) || {};
        const ind = /\n([ \t]+)"/.exec(text);
        vm.indent = ind ? ind[1] : "\t";
        vm.newline = text.endsWith("\n");
        base = vm.obj;
        fillForm(base);
        $("#f-json").value = text;
    }

    /* Switches between the form and the JSON view, carrying the edit over;
     * refused (with the reason) while the JSON is not an object. */
    function setMode(next) {
        if (next === mode) return true;
        if (next === "json") {
            $("#f-json").value = editedText().text;
        } else {
            let o;
            try {
                o = JSON.parse($("#f-json").value);
            } catch (e) {
                o = e;
            }
            if (typeof o !== "object" || o === null || Array.isArray(o) || o instanceof Error) {
                setAlert($("#other-errors"), "danger", "The JSON view holds no machine file object; the form cannot show it",
                    o instanceof Error ? o.message : "");
                return false;
            }
            base = o;
            fillForm(base);
        }
        mode = next;
        clearErrors($("#editor"));
        for (const [m, tab] of [["form", "#mode-form"], ["json", "#mode-json"]]) {
            const t = $(tab), on = m === mode;
            t.setAttribute("aria-selected", String(on));
            t.tabIndex = on ? 0 : -1;
            t.parentElement.classList.toggle("pf-m-current", on);
            document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
        }
        return true;
    }

    function fillForm(o) {
        const attrs = o.attrs || {};
        $("#f-description").value = o.description || "";
        renderTagChoices($("#f-tags"), o.tags || [], "f-tag-");
        $("#f-ram").value = attrs.memory?.ram ?? "";
        $("#f-sockets").value = attrs.cpu?.sockets ?? "";
        $("#f-cores").value = attrs.cpu?.cores ?? "";
        $("#f-threads").value = attrs.cpu?.threads ?? "";
        $("#f-tpm").checked = !!attrs.tpm?.enabled;
        $("#f-console").checked = !!attrs.console?.enabled;
        // What machina uses when a field is empty (from tags or defaults).
        const eff = tagsByMachine[vm.name] || {};
        const hint = (input, v) => {
            input.placeholder = v ? String(v) : "";
            input.title = v ? "Empty: " + v + " from the tags or machina's default" : "";
        };
        hint($("#f-ram"), eff["ram-mib"]);
        for (const k of ["sockets", "cores", "threads"]) hint($("#f-" + k), eff.cpu && eff.cpu[k]);
        $("#f-vars").value = Object.entries(o.vars || {}).map(([k, v]) => k + "=" + v).join("\n");
        renderLists(o);
    }

    /* ---- Forms from the schema: volumes, connections, devices ---- */

    let schema = null; // `machina schema machine`
    let hostFile = {}; // `machina cat --json system`

    /* The lists of the machine file edited as tables, one row an item. */
    const LISTS = [
        { key: "volumes", one: "volume" },
        { key: "connections", one: "connection" },
        { key: "devices", one: "device" },
    ];

    /* A property's schema with its $ref followed and "or null" dropped;
     * `ref` names the definition it came from (e.g. "PoolName") and `rule`
     * is that definition's description (what a valid value is). */
    function resolve(s) {
        let ref = null, rule = null;
        for (let i = 0; i < 8 && s; i++) {
            if (s.$ref) {
                ref = s.$ref.replace("#/$defs/", "");
                rule = schema.$defs[ref]?.description || null;
                s = { ...schema.$defs[ref], description: s.description || rule };
            } else if (s.anyOf) {
                const some = s.anyOf.filter(x => x.type !== "null");
                if (some.length !== 1) break;
                s = { ...some[0], description: s.description };
            } else {
                break;
            }
        }
        const type = Array.isArray(s.type) ? s.type.find(t => t !== "null") : s.type;
        return { ...s, type, ref, rule };
    }

    /* Names the host file defines, for the properties that must name one:
     * shown as choices (a select), as an enum would be. */
    const HOST_CHOICES = {
        PoolName: () => Object.keys(hostFile.storage || {}),
        NetworkName: () => Object.keys(hostFile.network || {}),
        ClassName: () => Object.values(hostFile["mediated-device"] || {}).flatMap(d => Object.keys(d.classes || {})),
    };

    /* The item schema's properties, "name" first, then the schema's order. */
    function itemProps(key) {
        const items = resolve(resolve(schema.properties[key]).items || {});
        const props = Object.entries(items.properties || {}).map(([k, v]) => [k, resolve(v)]);
        return props.sort((a, b) => (b[0] === "name") - (a[0] === "name"));
    }

    function renderLists(o) {
        const box = $("#lists");
        box.replaceChildren();
        if (!schema) {
            box.append(el("p", { class: "muted" }, "Volumes, connections and devices: machina schema machine did not answer."));
            return;
        }
        for (const { key, one } of LISTS) {
            if (!schema.properties[key]) continue;
            const props = itemProps(key);
            const body = el("tbody", { role: "rowgroup" });
            const table = el("table", { class: "pf-c-table pf-m-compact pf-m-grid-md", role: "grid", "aria-label": key },
                el("thead", {}, el("tr", { role: "row" },
                    ...props.map(([k, p]) => el("th", { role: "columnheader", scope: "col", title: p.description || "" }, k)),
                    el("th", { role: "columnheader", scope: "col" }, el("span", { class: "pf-screen-reader" }, "Remove")))),
                body);
            const add = el("button", {
                type: "button", class: "pf-c-button pf-m-link pf-m-inline", id: "add-" + one, disabled: !admin,
                onclick: () => {
                    body.append(listRow(key, one, props, {}, true));
                    renumber(key);
                    body.lastChild.querySelector("input, select")?.focus();
                }
            }, "Add " + one);
            const group = el("div", { class: "pf-c-form__group field list-editor", "data-path": key, "data-list": key },
                el("div", { class: "pf-c-form__group-label" },
                    el("span", { class: "pf-c-form__label" },
                        el("span", { class: "pf-c-form__label-text" }, key[0].toUpperCase() + key.slice(1)))),
                table,
                el("p", { class: "empty" }, "No " + key + "."),
                el("p", { class: "pf-c-form__helper-text pf-m-error field-error", "aria-live": "polite" }),
                el("div", {}, add));
            box.append(group);
            for (const item of o[key] || []) body.append(listRow(key, one, props, item, false));
            renumber(key);
        }
    }

    /* One item's row: a typed input per property. */
    function listRow(key, one, props, item, added) {
        const tr = el("tr", { role: "row" });
        tr.item = item;
        tr.added = added;
        if (typeof item !== "object" || item === null || Array.isArray(item)) {
            // Not an object: kept as it is, for machina check to name.
            tr.append(el("td", { colspan: props.length, class: "muted" }, "not an object: " + JSON.stringify(item)));
        } else {
            for (const [k, p] of props) {
                const v = item[k];
                const title = p.description || k;
                let input;
                const choices = p.enum || (HOST_CHOICES[p.ref] && HOST_CHOICES[p.ref]());
                if (choices) {
                    const all = [...new Set([...choices, ...(v === undefined || v === null ? [] : [String(v)])])];
                    input = el("select", { class: "pf-c-form-control", "aria-label": one + " " + k, title },
                        el("option", { value: "" }, "—"),
                        ...all.map(c => el("option", { value: c, selected: String(v) === c }, choices.includes(c) ? c : c + " (not defined)")));
                } else if (p.type === "boolean") {
                    input = el("input", { type: "checkbox", class: "pf-c-check__input", "aria-label": one + " " + k, title, checked: v === true });
                } else {
                    input = el("input", {
                        type: "text", class: "pf-c-form-control", "aria-label": one + " " + k, title,
                        inputmode: p.type === "integer" ? "numeric" : null,
                        placeholder: p.format === "uuid" ? "derived" : null,
                    });
                    input.value = v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
                }
                input.dataset.prop = k;
                input.disabled = !admin;
                tr.append(el("td", { role: "cell", "data-label": k, class: p.type === "boolean" ? "check-cell" : "" },
                    el("div", { class: "field", "data-cell": k }, input,
                        el("p", { class: "pf-c-form__helper-text pf-m-error field-error", "aria-live": "polite" }))));
            }
        }
        tr.append(el("td", { role: "cell", class: "pf-c-table__action" },
            el("button", {
                type: "button", class: "pf-c-button pf-m-link pf-m-danger pf-m-inline", disabled: !admin,
                "aria-label": "Remove " + one,
                onclick: () => { tr.remove(); renumber(key); }
            }, "Remove")));
        return tr;
    }

    /* Gives each cell the JSON path machina names its problems by. */
    function renumber(key) {
        const group = document.querySelector('.list-editor[data-list="' + key + '"]');
        const rows = [...group.querySelectorAll("tbody tr")];
        rows.forEach((tr, i) => {
            for (const f of tr.querySelectorAll(".field[data-cell]")) f.dataset.path = key + "." + i + "." + f.dataset.cell;
        });
        group.querySelector(".empty").hidden = rows.length > 0;
        group.querySelector("table").hidden = rows.length === 0;
    }

    /* Checks a typed value against its property's schema; a message or null. */
    function checkValue(p, v) {
        // A rule reads "A volume name: letters, digits, ...".
        const rule = p.rule || "";
        const what = rule.includes(": ") ? rule.split(": ")[0].replace(/^A /, "a ") : "valid";
        if (p.type === "integer") {
            if (typeof v !== "number") return "a whole number, not \"" + v + "\"";
            if (p.minimum !== undefined && v < p.minimum) return "at least " + p.minimum;
            if (p.maximum !== undefined && v > p.maximum) return "at most " + p.maximum;
        } else if (p.type === "string" && typeof v === "string") {
            if (p.maxLength !== undefined && v.length > p.maxLength) return "at most " + p.maxLength + " characters";
            if (p.pattern && !new RegExp(p.pattern).test(v))
                return "\"" + v + "\" is not " + what + (rule.includes(": ") ? ": " + rule.split(": ").slice(1).join(": ") : "");
        }
        return null;
    }

    /* The lists as the form holds them: the items (each its original keys
     * and order, with the form's values over them) and local problems. */
    function editedLists(o, problems) {
        for (const { key } of LISTS) {
            const group = document.querySelector('.list-editor[data-list="' + key + '"]');
            if (!group) continue;
            const props = Object.fromEntries(itemProps(key));
            const items = [...group.querySelectorAll("tbody tr")].map((tr, i) => {
                if (typeof tr.item !== "object" || tr.item === null || Array.isArray(tr.item)) return tr.item;
                const item = { ...tr.item };
                for (const input of tr.querySelectorAll("[data-prop]:is(input, select)")) {
                    const k = input.dataset.prop, p = props[k];
                    let v;
                    if (input.type === "checkbox") v = input.checked ? true : (k in tr.item ? false : undefined);
                    else if (p.type === "integer") v = numberOrText(input.value);
                    else v = input.value === "" ? undefined : input.value;
                    if (v === undefined) {
                        delete item[k];
                        continue;
                    }
                    item[k] = v;
                    const msg = checkValue(p, v);
                    if (msg) problems.push({ path: key + "[" + i + "]." + k, message: msg });
                }
                return item;
            });
            if (items.length || o[key] !== undefined) o[key] = items;
        }
    }

    function renderTagChoices(box, selected, prefix) {
        box.replaceChildren();
        const all = [...new Set([...hostTags, ...selected])];
        for (const t of all) {
            const id = prefix + t;
            box.append(el("div", { class: "pf-c-check" },
                el("input", { type: "checkbox", class: "pf-c-check__input", id, value: t, checked: selected.includes(t), disabled: !admin }),
                el("label", { class: "pf-c-check__label", for: id }, hostTags.includes(t) ? t : t + " (not in the host file)")));
        }
        if (!all.length) box.append(el("span", { class: "muted" }, "The host file defines no tags."));
    }
    function chosenTags(box) {
        return [...box.querySelectorAll("input:checked")].map(i => i.value);
    }

    /* A number typed as digits becomes a JSON number; anything else is kept
     * as typed so that machina check names the problem. */
    function numberOrText(s) {
        s = s.trim();
        if (s === "") return undefined;
        return /^[0-9]+$/.test(s) ? Number(s) : s;
    }
    function setPath(obj, path, value) {
        let o = obj;
        for (const k of path.slice(0, -1)) {
            if (typeof o[k] !== "object" || o[k] === null) {
                if (value === undefined) return;
                o[k] = {};
            }
            o = o[k];
        }
        const last = path[path.length - 1];
        if (value === undefined) delete o[last];
        else o[last] = value;
    }

    /* The edited machine file as text, formatted like the original (its
     * indentation, key order and final newline), plus local problems. */
    function editedText() {
        const problems = [];
        if (mode === "json") {
            const text = $("#f-json").value;
            try {
                JSON.parse(text);
            } catch (e) {
                problems.push({ message: "not valid JSON: " + e.message });
            }
            return { text, problems };
        }
        const o = JSON.parse(JSON.stringify(base));
        const desc = $("#f-description").value;
        if (desc !== "" || o.description !== undefined) o.description = desc;
        const tags = chosenTags($("#f-tags"));
        if (tags.length || o.tags !== undefined) o.tags = tags;
        setPath(o, ["attrs", "memory", "ram"], numberOrText($("#f-ram").value));
        for (const k of ["sockets", "cores", "threads"])
            setPath(o, ["attrs", "cpu", k], numberOrText($("#f-" + k).value));
        for (const k of ["tpm", "console"]) {
            const on = $("#f-" + k).checked;
            if (on || o.attrs?.[k]?.enabled !== undefined) setPath(o, ["attrs", k, "enabled"], on);
        }
        const vars = {};
        for (const line of $("#f-vars").value.split("\n")) {
            if (!line.trim()) continue;
            const i = line.indexOf("=");
            if (i <= 0) problems.push({ path: "vars", message: "expected name=value: " + line });
            else vars[line.slice(0, i).trim()] = line.slice(i + 1);
        }
        if (Object.keys(vars).length || o.vars !== undefined) o.vars = vars;
        editedLists(o, problems);
        let text = JSON.stringify(o, null, vm.indent);
        if (vm.newline) text += "\n";
        return { text, problems };
    }

    /* Runs `machina check --json VM` against TEXT as VM's machine file, in a
     * private copy of the configuration directory (so nothing is written
     * before the text is valid). Resolves to the problems. */
    async function checkText(name, text) {
        const script = [
            "set -eu",
            "t=$(mktemp -d)",
            "trap 'rm -rf \"$t\"' EXIT",
            "mkdir \"$t/machine.conf.d\"",
            "cp \"$1/machina.conf.json\" \"$t/\"",
            "for f in \"$1\"/machine.conf.d/*.conf.json; do [ -e \"$f\" ] && cp \"$f\" \"$t/machine.conf.d/\"; done",
            "cat > \"$t/machine.conf.d/$2.conf.json\"",
            "cd \"$t\"",
            "\"$3\" --config-dir \"$t\" check --json \"$2\" || true",
        ].join("\n");
        const r = await run(["/bin/sh", "-c", script, "--", configDir(), name, settings.machina], { input: text });
        const problems = parseJson(r.out);
        if (!Array.isArray(problems))
            return [{ path: "", message: "machina check did not run: " + (r.err || r.out) }];
        // The problems name the private copy; show the real file.
        for (const p of problems) {
            p.file = machineFile(name);
            p.text = p.file + (p.line ? ":" + p.line + ":" + p.column : "") + (p.path ? ": " + p.path : "") + ": " + p.message;
        }
        return problems;
    }

    function clearErrors(form) {
        for (const f of form.querySelectorAll(".field")) {
            f.classList.remove("has-error");
            for (const i of f.querySelectorAll(".pf-c-form-control")) i.removeAttribute("aria-invalid");
            f.querySelector(".field-error").textContent = "";
        }
        for (const b of form.querySelectorAll(".pf-c-alert")) {
            if (b.id !== "apply-result") hideAlert(b);
        }
    }

    /* Shows each problem next to the field whose JSON path it names (the
     * most specific field whose path is the problem's or above it), the
     * others in OTHER. */
    function showProblems(form, problems, other) {
        clearErrors(form);
        const rest = [];
        // Only fields shown (not the form's while the JSON view is).
        const fields = [...form.querySelectorAll(".field[data-path]")].filter(f => !f.closest("[hidden]"));
        for (const p of problems) {
            const path = (p.path || "").replace(/\[(\d+)\]/g, ".$1");
            const field = fields
                .filter(f => path === f.dataset.path || path.startsWith(f.dataset.path + "."))
                .sort((a, b) => b.dataset.path.length - a.dataset.path.length)[0];
            if (field) {
                field.classList.add("has-error");
                // The field's own input (not those of a list's rows).
                const input = field.querySelector(":scope > .pf-c-form-control, :scope > * > .pf-c-form-control");
                if (input) input.setAttribute("aria-invalid", "true");
                const box = field.querySelector(":scope > .field-error, :scope > * > .field-error");
                box.textContent += (box.textContent ? "\n" : "") + (p.message || p.text);
            } else {
                rest.push(p.text || p.message);
            }
        }
        if (rest.length) setAlert(other, "danger", "machina check found problems", rest.join("\n"));
        else hideAlert(other);
        form.querySelector(".has-error .pf-c-form-control, .has-error input")?.scrollIntoView({ block: "center" });
    }

    /* A line diff (longest common subsequence; machine files are small). */
    function diffLines(a, b) {
        const x = a.split("\n"), y = b.split("\n");
        const n = x.length, m = y.length;
        const L = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
        for (let i = n - 1; i >= 0; i--)
            for (let j = m - 1; j >= 0; j--)
                L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
        const out = [];
        let i = 0, j = 0;
        while (i < n || j < m) {
            if (i < n && j < m && x[i] === y[j]) { out.push([" ", x[i]]); i++; j++; }
            else if (j < m && (i === n || L[i][j + 1] >= L[i + 1][j])) { out.push(["+", y[j]]); j++; }
            else { out.push(["-", x[i]]); i++; }
        }
        return out;
    }

    let pending = null;

    async function review(ev) {
        ev.preventDefault();
        $("#review-panel").hidden = true;
        hideAlert($("#apply-result")); // a previous save's or apply's
        const { text, problems } = editedText();
        const form = $("#editor");
        if (problems.length) return showProblems(form, problems, $("#other-errors"));
        const found = await checkText(vm.name, text);
        showProblems(form, found, $("#other-errors"));
        if (found.length) return;
        if (text === vm.text) return setAlert($("#other-errors"), "info", "No changes.");
        pending = text;
        const d = $("#diff");
        d.replaceChildren(...diffLines(vm.text, text)
            .filter((l, k, all) => l[0] !== " " || all.slice(Math.max(0, k - 2), k + 3).some(n => n[0] !== " "))
            .map(([op, line]) => el("span", { class: op === "+" ? "add" : op === "-" ? "del" : "" }, op + " " + line + "\n")));
        // The file is rewritten as JSON with its own indentation and key
        // order; a layout of its own (one-line arrays, spacing) is not kept.
        const same = JSON.stringify(vm.obj, null, vm.indent) + (vm.newline ? "\n" : "") === vm.text;
        $("#layout-note").hidden = same;
        $("#review-panel").hidden = false;
        $("#save").focus();
    }

    function save() {
        const text = pending;
        if (text === null) return;
        cockpit.file(vm.path, { superuser: "try" }).replace(text, vm.tag).then((tag) => {
            pending = null;
            $("#review-panel").hidden = true;
            setFile(text, tag);
            setAlert($("#apply-result"), "success", "Saved " + vm.path + ".",
                "Apply runs machina gen to update the unit and launch plan.");
            refreshList();
        }, (ex) => {
            setAlert($("#other-errors"), "danger", ex.problem === "change-conflict"
                ? vm.path + " changed on disk since it was loaded: revert and edit again"
                : "Cannot save " + vm.path + ": " + cockpit.message(ex));
        });
    }

    function genArgs() {
        const a = ["gen"];
        if (settings["gen-root"]) a.push("--root", settings["gen-root"]);
        return a;
    }

    async function apply() {
        const box = $("#apply-result");
        hideAlert(box);
        // `gen --json` reports {"changed": [...], "unchanged": [...]}; an older
        // machina without it (usage error, exit 2) gets a plain `gen`.
        let r = await machina([...genArgs(), "--json", vm.name]);
        let report = parseJson(r.out);
        if (!r.ok && r.status === 2) {
            r = await machina([...genArgs(), vm.name]);
            report = null;
        }
        const m = machines.find(x => x.name === vm.name);
        const running = m && simpleState(m) === "running";
        let title, msg;
        if (!r.ok) {
            title = "machina gen " + vm.name + " failed";
            msg = r.err || r.out;
        } else if (report && Array.isArray(report.changed)) {
            title = report.changed.length ? "Changed:" : "Nothing changed: the unit and plan were up to date.";
            msg = report.changed.join("\n") + (report.changed.length && running ? "\nRestart the machine for the change to take effect." : "");
        } else {
            title = "Generated the unit and launch plan of " + vm.name + ".";
            msg = r.out.trim() + (running ? "\nRestart the machine for a changed configuration to take effect." : "");
        }
        setAlert(box, r.ok ? "success" : "danger", title, msg.trim());
        refreshList();
    }

    /* A value of `inspect --json` as text: lists one entry a line, objects
     * as "key: value", nothing as a dash. */
    function inspectText(v) {
        if (v === null || v === undefined || v === "") return "—";
        if (Array.isArray(v)) return v.length ? v.map(inspectText).join("\n") : "—";
        if (typeof v === "object") {
            // A volume or TAP: its name first, then the rest.
            const { name, ...rest } = v;
            const parts = Object.entries(rest).filter(([, x]) => x !== null && x !== "" && x !== false)
                .map(([k, x]) => k + ": " + (typeof x === "object" ? JSON.stringify(x) : x));
            return (name !== undefined ? name + (parts.length ? " — " : "") : "") + parts.join(", ");
        }
        if (typeof v === "boolean") return v ? "yes" : "no";
        return String(v);
    }

    async function loadInspect(name) {
        const dl = $("#inspect");
        dl.replaceChildren();
        const r = await machina(["inspect", "--json", name]);
        const data = parseJson(r.out);
        const o = Array.isArray(data) ? data[0] : data;
        if (!o) {
            dl.append(el("p", { class: "muted" }, "machina inspect --json " + name + " failed: " + (r.err || r.out)));
            return;
        }
        const rows = [
            ["State", o.state],
            ["Since", o.since ? new Date(o.since * 1000).toLocaleString() : null],
            ["Enabled", o.enabled],
            ["UUID", o.uuid],
            ["Unit", o.unit && [o.unit.name, o.unit["active-state"], o.unit["sub-state"]].filter(Boolean).join(" · ")],
            ["Main PID", o["main-pid"]],
            ["UID / GID", o["main-uid"] != null ? o["main-uid"] + " / " + o["main-gid"] : o["vm-uid"]],
            ["Changed since gen", o["config-changed-since-gen"] === null ? "not generated" : o["config-changed-since-gen"]],
            ["Plan", o.plan],
            ["Accelerator", o.accelerator],
            ["QMP", o.qmp ? (o.qmp.answers ? "answers" : "does not answer") : null],
            ["Spice", o.spice],
            ["Guest agent", o.agent],
            ["TAPs", o.taps],
            ["Volumes", o.volumes],
            ["TPM", o.tpm],
            ["Console", o.console],
            ["Errors", o.errors],
        ];
        for (const [k, v] of rows) {
            dl.append(el("div", { class: "pf-c-description-list__group" },
                el("dt", { class: "pf-c-description-list__term" }, el("span", { class: "pf-c-description-list__text" }, k)),
                el("dd", { class: "pf-c-description-list__description" },
                    el("div", { class: "pf-c-description-list__text", "data-key": k }, inspectText(v)))));
        }
    }

    async function loadArgs(name) {
        const r = await machina(["args", name]);
        $("#args").textContent = r.ok ? r.out : (r.err || r.out);
    }

    async function loadLogs(name) {
        const r = await machina(["logs", "-n", "100", name]);
        $("#logs-source").textContent = "machina logs -n 100 " + name + (r.ok ? "" : " failed");
        $("#logs").textContent = (r.out || r.err || "").trim() || "(no entries)";
        // What the guest wrote to its serial console (attrs.console); machina
        // says why not when there is none or the VM is not running.
        const c = await machina(["console", "--log", name]);
        $("#console-log").textContent = c.ok ? (c.out.trim() || "(empty)") : (c.err || c.out).trim();
    }

    /* PatternFly tabs: a click or the arrow keys select one, showing its panel. */
    function wireTabs(box) {
        const tabs = [...box.querySelectorAll('[role="tab"]')];
        const select = (t) => {
            for (const x of tabs) {
                const on = x === t;
                x.setAttribute("aria-selected", String(on));
                x.tabIndex = on ? 0 : -1;
                x.parentElement.classList.toggle("pf-m-current", on);
                document.getElementById(x.getAttribute("aria-controls")).hidden = !on;
            }
        };
        for (const t of tabs) {
            t.addEventListener("click", () => select(t));
            t.addEventListener("keydown", (ev) => {
                const step = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
                if (!step) return;
                const next = tabs[(tabs.indexOf(t) + step + tabs.length) % tabs.length];
                select(next);
                next.focus();
            });
        }
    }

    /* ---- New VM and dissolve ---- */

    function openCreate() {
        const form = $("#create-form");
        form.reset();
        clearErrors(form);
        renderTagChoices($("#c-tags"), [], "c-tag-");
        $("#create-dialog").showModal();
        $("#c-name").focus();
    }

    async function create(ev) {
        ev.preventDefault();
        const form = $("#create-form");
        const name = $("#c-name").value.trim();
        if (!NAME.test(name) || name.includes(".."))
            return showProblems(form, [{ path: "name", message: "a name is letters, digits, '.', '_' and '-'" }], $("#create-errors"));
        if (machines.some(m => m.name === name))
            return showProblems(form, [{ path: "name", message: "a machine named " + name + " exists" }], $("#create-errors"));
        const id = await machina(["gen-id"]);
        if (!id.ok) return showProblems(form, [{ text: "machina gen-id: " + id.err }], $("#create-errors"));
        const o = { id: id.out.trim() };
        const desc = $("#c-description").value;
        if (desc) o.description = desc;
        o.tags = chosenTags($("#c-tags"));
        const text = JSON.stringify(o, null, "\t") + "\n";
        const problems = await checkText(name, text);
        if (problems.length) return showProblems(form, problems, $("#create-errors"));
        // "-": the file must not exist yet.
        cockpit.file(machineFile(name), { superuser: "try" }).replace(text, "-").then(() => {
            $("#create-dialog").close();
            refreshList();
            cockpit.location.go(["vm", name]);
        }, (ex) => showProblems(form, [{ text: "Cannot write " + machineFile(name) + ": " + cockpit.message(ex) }], $("#create-errors")));
    }

    async function dissolve() {
        $("#dissolve-dialog").close();
        await lifecycle("dissolve", vm.name);
    }

    /* ---- Wiring ---- */

    function setAdmin(allowed) {
        // null while Cockpit is still asking: no changes offered, no notice yet.
        admin = allowed === true;
        $("#readonly").hidden = allowed !== false;
        for (const b of document.querySelectorAll("button.admin, .admin button, .admin input, #editor input, #editor textarea, #editor select, #editor button:not([role=\"tab\"])"))
            b.disabled = !admin;
        renderList();
    }

    async function route() {
        showError("");
        const name = currentVm();
        if (name) {
            await showVm(name);
        } else {
            vm = null;
            $("#vm").hidden = true;
            $("#overview").hidden = false;
        }
    }

    async function loadSettings() {
        try {
            const r = await fetch("../manifests.json", { credentials: "same-origin" });
            const all = await r.json();
            Object.assign(settings, (all.machina && all.machina.config) || {});
        } catch (e) {
            // The defaults: `machina` on PATH, /etc/machina.
        }
    }

    /* The host file (its tags, pools, networks, device classes) and the
     * machine file's schema, which the forms are built from. */
    async function loadHost() {
        const [r, sch] = await Promise.all([machina(["cat", "--json", "system"]), machina(["schema", "machine"])]);
        const sys = parseJson(r.out);
        hostFile = (Array.isArray(sys) ? sys[0] : sys) || {};
        hostTags = Object.keys(hostFile.tag || {}).sort();
        schema = parseJson(sch.out);
        if (!schema) showError("machina schema machine failed: " + (sch.err || sch.out));
    }

    async function init() {
        await loadSettings();
        const perm = cockpit.permission({ admin: true });
        perm.addEventListener("changed", () => setAdmin(perm.allowed));
        setAdmin(perm.allowed);
        $("#new-vm").addEventListener("click", openCreate);
        $("#create-form").addEventListener("submit", create);
        $("#create-cancel").addEventListener("click", () => $("#create-dialog").close());
        $("#editor").addEventListener("submit", review);
        $("#save").addEventListener("click", save);
        $("#cancel-save").addEventListener("click", () => { pending = null; $("#review-panel").hidden = true; });
        $("#revert").addEventListener("click", () => {
            clearErrors($("#editor"));
            base = vm.obj;
            fillForm(base);
            $("#f-json").value = vm.text;
        });
        $("#mode-form").addEventListener("click", () => setMode("form"));
        $("#mode-json").addEventListener("click", () => setMode("json"));
        for (const t of ["#mode-form", "#mode-json"])
            $(t).addEventListener("keydown", (ev) => {
                if (ev.key === "ArrowRight" || ev.key === "ArrowLeft")
                    if (setMode(mode === "form" ? "json" : "form")) $(mode === "form" ? "#mode-form" : "#mode-json").focus();
            });
        $("#apply").addEventListener("click", apply);
        $("#dissolve").addEventListener("click", () => {
            $("#dissolve-name").textContent = vm.name;
            $("#dissolve-dialog").showModal();
            $("#dissolve-cancel").focus();
        });
        $("#dissolve-confirm").addEventListener("click", dissolve);
        $("#dissolve-cancel").addEventListener("click", () => $("#dissolve-dialog").close());
        for (const b of document.querySelectorAll("#vm-actions [data-action]"))
            b.addEventListener("click", () => lifecycle(b.dataset.action, vm.name));
        $("#back").addEventListener("click", (ev) => { ev.preventDefault(); cockpit.location.go([]); });
        cockpit.addEventListener("locationchanged", route);
        wireTabs($("#tabs"));
        await loadHost();
        await refreshList();
        await route();
        setAdmin(perm.allowed);
        document.body.dataset.ready = "1";
        schedulePoll();
    }

    init();
}());
