function (doc) {
  if (doc.type === 'task') {
    emit([doc.state, doc.platform, doc.record_created, doc.record, doc.order], null);
  }
}
