function (doc) {
  if (doc.type === 'record') {
    emit(doc.created, {name: doc.name, description: doc.description, submitter: doc.submitter, meta: doc.meta});
  }
}
