"""Create a capability grant: which secret, injected how, for which requests, how long.

The editor only collects and checks the scopes; the broker validates them again
(the https host, the path pattern) and is the one that says no.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from app.controllers.vault_controller import GrantRequest, InjectionKind, build_grant
from app.dialogs.form import accept_buttons, labelled_row, problem_label
from app.qt import Qt, QtWidgets

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+$")
# A local service (``localhost``, a LAN name) may be a single label.
LOCAL_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
INJECTIONS = (
    ("header", "HTTP header"),
    ("query", "Query parameter"),
    ("basic", "Basic auth (user name + secret)"),
)


class GrantEditorDialog(QtWidgets.QDialog):
    """Collects a :class:`GrantRequest`; :meth:`request` holds the accepted one.

    Args:
        secret_names: The secrets that can be granted.
        now: The current time (a parameter so tests control expiry).
    """

    def __init__(
        self,
        secret_names: list[str],
        *,
        now: datetime | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Grant a capability")
        self.setAccessibleName("Grant a capability")
        self._now = now
        self._request: GrantRequest | None = None

        self.secret = QtWidgets.QComboBox()
        self.secret.addItems(secret_names)
        self.secret.setAccessibleName("Secret")
        self.injection = QtWidgets.QComboBox()
        for key, text in INJECTIONS:
            self.injection.addItem(text, key)
        self.injection.setAccessibleName("Injection")
        self.template = QtWidgets.QLineEdit("Authorization: Bearer {}")
        self.template.setAccessibleName("Injection template")
        self.template.setToolTip(
            "Header: 'Name: value with {}'. Query: the parameter name. Basic: the user name."
        )
        self.host = QtWidgets.QLineEdit()
        self.host.setPlaceholderText("api.example.com")
        self.host.setAccessibleName("Host")
        self.method_boxes: dict[str, QtWidgets.QCheckBox] = {}
        methods_row = QtWidgets.QHBoxLayout()
        for method in METHODS:
            box = QtWidgets.QCheckBox(method)
            box.setAccessibleName(f"Allow {method}")
            box.setChecked(method == "GET")
            self.method_boxes[method] = box
            methods_row.addWidget(box)
        methods_row.addStretch(1)
        methods_widget = QtWidgets.QWidget()
        methods_widget.setLayout(methods_row)
        methods_row.setContentsMargins(0, 0, 0, 0)
        self.path = QtWidgets.QLineEdit("/*")
        self.path.setAccessibleName("Path pattern")
        self.path.setToolTip("'*' matches the rest of the path (only at the end), '+' one segment.")
        self.ttl = QtWidgets.QSpinBox()
        self.ttl.setRange(0, 7 * 24 * 60)
        self.ttl.setValue(60)
        self.ttl.setSuffix(" min")
        self.ttl.setSpecialValueText("never expires")
        self.ttl.setAccessibleName("Expires after (minutes)")
        self.uses = QtWidgets.QSpinBox()
        self.uses.setRange(0, 1_000_000)
        self.uses.setValue(10)
        self.uses.setSpecialValueText("unlimited")
        self.uses.setAccessibleName("Maximum uses")
        self.allow_local = QtWidgets.QCheckBox("Allow a local / private host (for local services)")
        self.allow_local.setAccessibleName("Allow local host")

        form = QtWidgets.QFormLayout()
        for text, widget in (
            ("&Secret:", self.secret),
            ("&Injected as:", self.injection),
            ("&Template:", self.template),
            ("&Host (https):", self.host),
            ("&Methods:", methods_widget),
            ("&Path pattern:", self.path),
            ("&Expires after:", self.ttl),
            ("Maximum &uses:", self.uses),
        ):
            buddy = self.method_boxes["GET"] if widget is methods_widget else None
            labelled_row(form, text, widget, buddy=buddy)
        form.addRow("", self.allow_local)

        self.summary = QtWidgets.QLabel()
        self.summary.setObjectName("summary")
        self.summary.setAccessibleName("What the grant allows")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(
            self.summary.textInteractionFlags() | Qt.TextInteractionFlag.TextSelectableByMouse
        )

        self.problem = problem_label()
        self.buttons = accept_buttons(self, text="&Grant")
        self.injection.currentIndexChanged.connect(self._injection_changed)
        for edit in (self.template, self.host, self.path):
            edit.textChanged.connect(self.update_summary)
        for spin in (self.ttl, self.uses):
            spin.valueChanged.connect(self.update_summary)
        for box in (*self.method_boxes.values(), self.allow_local):
            box.toggled.connect(self.update_summary)
        self.secret.currentIndexChanged.connect(self.update_summary)
        self.update_summary()

        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.summary)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)

    def _injection_changed(self) -> None:
        defaults = {"header": "Authorization: Bearer {}", "query": "api_key", "basic": "user"}
        self.template.setText(defaults[str(self.injection.currentData())])

    def update_summary(self) -> None:
        """Say in one line what the grant would allow, as the agent will be told."""
        try:
            if self.validate() is not None:
                raise ValueError("incomplete")
            grant = build_grant(
                self._build(), session_id="preview", approved_by="gui", now=self._time()
            )
        except ValueError:
            self.summary.setText("Allows: (complete the scopes)")
            return
        limits = []
        limits.append(f"{grant.max_uses} uses" if grant.max_uses else "unlimited uses")
        if grant.expires_at is not None:
            limits.append(f"until {grant.expires_at.astimezone().strftime('%H:%M')}")
        else:
            limits.append("until the session ends")
        self.summary.setText(f"Allows: {grant.describe()} ({', '.join(limits)})")

    def validate(self) -> str | None:
        """Return what is wrong with the form, or None."""
        if self.secret.count() == 0:
            return "Add a secret first."
        kind = self.injection.currentData()
        template = self.template.text().strip()
        if kind == "header" and (":" not in template or "{}" not in template):
            return "A header template looks like 'Authorization: Bearer {}'."
        if kind in ("query", "basic") and not template:
            return "Name the query parameter or the user name."
        host, _, port = self.host.text().strip().lower().partition(":")
        pattern = LOCAL_HOST_RE if self.allow_local.isChecked() else HOST_RE
        if not pattern.match(host) and not self.allow_local.isChecked():
            return "Host: an exact host name such as api.example.com (no scheme or path)."
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            return "Port: a number from 1 to 65535 after the host (api.example.com:8443)."
        if not any(box.isChecked() for box in self.method_boxes.values()):
            return "Allow at least one method."
        try:
            # The vault's own validation: the exact rule it will enforce.
            build_grant(self._build(), session_id="check", approved_by="gui", now=self._time())
        except ValueError as e:
            return str(e)
        return None

    def _time(self) -> datetime:
        return self._now or datetime.now(UTC)

    def _build(self) -> GrantRequest:
        raw = self.host.text().strip().lower()
        # "host:port" only; anything URL-like stays whole so the vault rejects it.
        host, _, port = raw.partition(":") if "/" not in raw else (raw, "", "")
        minutes = self.ttl.value()
        kind: InjectionKind = self.injection.currentData()
        return GrantRequest(
            secret_name=self.secret.currentText(),
            injection_kind=kind,
            injection_detail=self.template.text().strip(),
            methods=tuple(m for m, box in self.method_boxes.items() if box.isChecked()),
            host=host,
            port=int(port) if port.isdigit() else 443,
            path_pattern=self.path.text().strip(),
            expires_at=self._time() + timedelta(minutes=minutes) if minutes else None,
            max_uses=self.uses.value() or None,
            allow_local=self.allow_local.isChecked(),
        )

    def accept(self) -> None:
        """Check the scopes; on success build the request and close."""
        problem = self.validate()
        if problem:
            self.problem.setText(problem)
            return
        self._request = self._build()
        super().accept()

    def request(self) -> GrantRequest | None:
        """The accepted request, or None if the dialog was cancelled."""
        return self._request
